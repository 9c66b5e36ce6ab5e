"""Hypothesis: random operation sequences against an in-memory model, and round-trips."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from conversation_codec import ConflictError, ConversationCodec

from conftest import KEY, Clock

json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(max_size=30)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
message_st = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "tool", "system"])},
    optional={"content": json_values, "tool_calls": json_values, "name": st.text(max_size=10)},
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(msgs=st.lists(message_st, max_size=12), encrypted=st.booleans())
def test_round_trip_random_messages(
    tmp_path: Path, msgs: list[dict[str, Any]], encrypted: bool
) -> None:
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    with ConversationCodec(
        folder / "c.log", encryption_key=KEY if encrypted else None, durability="flush"
    ) as c:
        c.extend(msgs)
    with ConversationCodec(folder / "c.log", encryption_key=KEY if encrypted else None) as c:
        assert (c.load() or []) == msgs
        assert [c.get(i) for i in range(len(msgs))] == msgs


class LogMachine(RuleBasedStateMachine):
    """A log driven by random operations from two codec instances must equal a plain list.

    The model also tracks what each instance last saw (issue 11 §4): ``version`` counts the
    changes made to the log, and ``views[who]`` is ``(version, count, whole)`` as of that
    instance's last load(), save(), append or pop, so the model predicts when save()
    must raise ConflictError instead of deleting or bringing back messages.
    """

    encrypted = True

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp())
        self.clock = Clock()
        self.model: list[dict[str, Any]] = []
        self.codecs = [self._open(), self._open()]
        self.version = 0
        self.views: list[tuple[int, int, bool] | None] = [None, None]

    def _changed(self, who: int, *, whole: bool) -> None:
        """``who`` changed the log; it holds the whole history afterwards if ``whole``."""
        self.version += 1
        self.views[who] = (self.version, len(self.model), whole)

    def _save(self, who: int, new: list[dict[str, Any]]) -> None:
        keep = 0
        for a, b in zip(new, self.model, strict=False):
            if a != b:
                break
            keep += 1
        view = self.views[who]
        if keep == len(self.model):  # extends: appends, unless it would re-add removed ones
            conflict = len(new) > keep and view is not None and len(self.model) < view[1]
        else:  # diverges: only a whole, current view may rewrite
            conflict = view != (self.version, len(self.model), True)
        if conflict:
            with pytest.raises(ConflictError):
                self.codecs[who].save(new)
            return
        self.codecs[who].save(new)
        changed = new != self.model or keep != len(self.model)
        self.model = new
        if changed:
            self._changed(who, whole=True)
        else:
            self.views[who] = (self.version, len(self.model), True)

    def _open(self) -> ConversationCodec:
        return ConversationCodec(
            self.folder / "c.log",
            encryption_key=KEY if self.encrypted else None,
            durability="flush",
            clock=self.clock,
        )

    def teardown(self) -> None:
        for c in self.codecs:
            c.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    @rule(who=st.integers(0, 1), m=message_st)
    def append(self, who: int, m: dict[str, Any]) -> None:
        assert self.codecs[who].append(m) == len(self.model)
        self.model.append(m)
        self._changed(who, whole=False)

    @rule(who=st.integers(0, 1), ms=st.lists(message_st, max_size=5))
    def extend(self, who: int, ms: list[dict[str, Any]]) -> None:
        assert self.codecs[who].extend(ms) == list(
            range(len(self.model), len(self.model) + len(ms))
        )
        self.model.extend(ms)
        if ms:
            self._changed(who, whole=False)

    @rule(who=st.integers(0, 1))
    def pop(self, who: int) -> None:
        if not self.model:
            assert self.codecs[who].pop() is None
            return
        whole = self.views[who] == (self.version, len(self.model), True)
        assert self.codecs[who].pop() == self.model.pop()
        self._changed(who, whole=whole)  # a pop keeps a whole view whole

    @rule(who=st.integers(0, 1), more=st.lists(message_st, max_size=3))
    def save_extended(self, who: int, more: list[dict[str, Any]]) -> None:
        self._save(who, self.model + more)

    @precondition(lambda self: len(self.model) > 0)
    @rule(who=st.integers(0, 1), data=st.data())
    def save_divergent(self, who: int, data: st.DataObject) -> None:
        cut = data.draw(st.integers(0, len(self.model) - 1))
        replacement = data.draw(st.lists(message_st, max_size=3))
        self._save(who, self.model[:cut] + replacement)

    @rule(who=st.integers(0, 1))
    def load(self, who: int) -> None:
        assert (self.codecs[who].load() or []) == self.model
        self.views[who] = (self.version, len(self.model), True)

    @rule(who=st.integers(0, 1))
    def clear(self, who: int) -> None:
        self.codecs[who].clear()
        self.model = []
        self._changed(who, whole=False)

    @rule(who=st.integers(0, 1))
    def reopen(self, who: int) -> None:
        self.codecs[who].close()
        self.codecs[who] = self._open()
        self.views[who] = None

    @rule(who=st.integers(0, 1))
    def delete_index(self, who: int) -> None:
        Path(str(self.folder / "c.log") + ".idx").unlink(missing_ok=True)

    @rule(who=st.integers(0, 1), n=st.integers(0, 6))
    def check_tail(self, who: int, n: int) -> None:
        assert self.codecs[who].tail(n) == (self.model[-n:] if n else [])

    @precondition(lambda self: len(self.model) > 0)
    @rule(who=st.integers(0, 1), data=st.data())
    def check_get(self, who: int, data: st.DataObject) -> None:
        i = data.draw(st.integers(-len(self.model), len(self.model) - 1))
        assert self.codecs[who].get(i) == self.model[i]

    @invariant()
    def same_as_model(self) -> None:
        c = self.codecs[0]
        assert len(c) == len(self.model)
        assert (c.load() or []) == self.model
        self.views[0] = (self.version, len(self.model), True)
        stamps = [c.timestamp(i) for i in range(len(self.model))]
        assert stamps == sorted(stamps)


def _pair(folder: Path, encrypted: bool) -> list[ConversationCodec]:
    clock = Clock()
    return [
        ConversationCodec(
            folder / "c.log",
            encryption_key=KEY if encrypted else None,
            durability="flush",
            clock=clock,
        )
        for _ in range(2)
    ]


@pytest.mark.parametrize("encrypted", [True, False])
@pytest.mark.parametrize("recreate", ["append", "same_save"])
def test_pop_after_another_instance_recreated_the_deleted_index(
    tmp_path: Path, encrypted: bool, recreate: str
) -> None:
    """Found by LogMachine: instance a keeps the descriptor of a deleted sidecar; b recreates
    the sidecar; a's pop must cut the file that b (and every later reader) loads, not the
    deleted one, or the sidecar keeps naming the popped record."""
    a, b = _pair(tmp_path, encrypted)
    model: list[dict[str, Any]] = [{"role": "system", "content": "popped later"}]
    assert a.append(model[0]) == 0
    Path(str(tmp_path / "c.log") + ".idx").unlink()
    if recreate == "append":
        model.append({"role": "user", "content": None})
        assert b.append(model[1]) == 1
    else:
        b.save(model)  # a write that changes nothing (no counter bump) but rebuilds the sidecar
    assert len(a) == len(model)
    assert a.pop() == model.pop()
    more = [{"role": "user"}, {"role": "user", "content": None}, {"role": "tool"}]
    assert a.extend(more) == list(range(len(model), len(model) + 3))
    model += more
    stamps = [a.timestamp(i) for i in range(len(model))]
    for c in (b, a, *_pair(tmp_path, encrypted)):
        assert c.tail(1) == model[-1:]
        assert [c.timestamp(i) for i in range(len(model))] == stamps
        assert c.load() == model
        assert [c.get(i) for i in range(len(model))] == model
        c.close()


class PlainLogMachine(LogMachine):
    encrypted = False


@pytest.mark.parametrize(
    ("machine", "max_examples"),
    [
        (LogMachine, 8),  # the default run: a bounded, derandomized sample
        (PlainLogMachine, 5),
        pytest.param(LogMachine, 15, marks=pytest.mark.slow),  # the default run's, before
        pytest.param(PlainLogMachine, 10, marks=pytest.mark.slow),
        pytest.param(LogMachine, 40, marks=pytest.mark.slow),
        pytest.param(PlainLogMachine, 25, marks=pytest.mark.slow),
    ],
    ids=["encrypted", "plain", "encrypted-15", "plain-10", "encrypted-full", "plain-full"],
)
def test_log_against_a_model(machine: type[LogMachine], max_examples: int) -> None:
    run_state_machine_as_test(
        machine, settings=settings(max_examples=max_examples, stateful_step_count=25, deadline=None)
    )
