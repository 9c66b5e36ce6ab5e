"""A process that forks with a codec open (a server that builds its codecs before forking its
workers, a ``multiprocessing`` pool started with "fork"), and library errors crossing a
process boundary (a pool worker sends its exception back pickled)."""

from __future__ import annotations

import inspect
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from conversation_codec import ConversationCodec, ConversationStore, errors

from conftest import KEY

# The end of the forking scripts below: each side writes down what it had acknowledged
# (in the folder ``out``), the child leaves at once, the parent waits for it.
_WRITE_DOWN_AND_JOIN = r"""
with open(os.path.join(out, side), "w") as f:
    json.dump(acked, f)
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
"""

# Parent and child append through the codec the parent opened (and used) before the fork;
# each writes down what it had acknowledged. Real processes: the lock is a flock, which the two
# would share through the inherited file description.
_FORKED_WRITERS = (
    r"""
import json, os, sys
from conversation_codec import ConversationCodec
path, key, durability, count, out = sys.argv[1:]
codec = ConversationCodec(path, encryption_key=key or None, durability=durability)
codec.append({"id": "before"})
codec.tail(1)
pid = os.fork()
side = "child" if pid == 0 else "parent"
acked = []
for i in range(int(count)):
    codec.append({"id": f"{side}-{i}"})
    acked.append(f"{side}-{i}")
"""
    + _WRITE_DOWN_AND_JOIN
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize(
    ("sealed", "durability"),
    [  # each scheme and each durability once by default; the other two pairs under slow
        pytest.param(True, "flush", id="sealed-flush"),
        pytest.param(False, "fsync", id="plain-fsync"),
        pytest.param(True, "fsync", id="sealed-fsync", marks=pytest.mark.slow),
        pytest.param(False, "flush", id="plain-flush", marks=pytest.mark.slow),
    ],
)
def test_parent_and_child_append_through_a_codec_opened_before_fork(
    tmp_path: Path, durability: str, sealed: bool
) -> None:
    path = tmp_path / "c.log"
    argv = [str(path), KEY if sealed else "", durability, "150", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-c", _FORKED_WRITERS, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    acked = [i for side in ("parent", "child") for i in json.loads((tmp_path / side).read_text())]
    assert len(acked) == 300
    with ConversationCodec(path, encryption_key=KEY if sealed else None) as codec:
        got = [m["id"] for m in codec.load() or []]
        assert codec.verify().ok
    assert got[0] == "before"
    assert sorted(got[1:]) == sorted(acked)  # every acknowledged append, once
    for side in ("parent", "child"):  # each process's appends in its own order
        assert [i for i in got if i.startswith(side)] == [f"{side}-{i}" for i in range(150)]


def _sample_args(cls: type[BaseException]) -> tuple[tuple[object, ...], dict[str, object]]:
    """Arguments that make an instance of ``cls``: a message, and each keyword-only
    parameter of its ``__init__`` (a path, an offset, an SQLSTATE)."""
    kwargs: dict[str, object] = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if param.kind is param.KEYWORD_ONLY:
            kwargs[name] = {"path": Path("/x/c.log"), "offset": 42}.get(name, "40001")
    return ("what went wrong",), kwargs


_ERRORS = [
    cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors.ConversationCodecError)
]


@pytest.mark.parametrize("cls", _ERRORS, ids=lambda cls: cls.__name__)
def test_every_library_error_survives_pickling(cls: type[BaseException]) -> None:
    """A pool worker's exception comes back pickled: an error that cannot be rebuilt broke
    ``ProcessPoolExecutor`` and hung ``multiprocessing.Pool.map``."""
    args, kwargs = _sample_args(cls)
    exc = cls(*args, **kwargs)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls
    assert str(back) == str(exc)
    assert {k: getattr(back, k) for k in kwargs} == {k: getattr(exc, k) for k in kwargs}


_FORK_IN_A_TRANSACTION = r"""
import os, sys
from conversation_codec import ConversationCodec, StorageError
codec = ConversationCodec(sys.argv[1], encryption_key=sys.argv[2])
codec.append({"id": "before"})
with codec.transaction():
    pid = os.fork()
    if pid == 0:
        try:
            codec.append({"id": "child, in the parent's transaction"})
        except StorageError as exc:
            print("refused:", exc, flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
    codec.append({"id": "parent"})
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_inside_a_transaction_cannot_write_in_it(tmp_path: Path) -> None:
    """The transaction, and the lock it holds, are the parent's: the child's write through
    it is a library error, and the parent's transaction goes on undisturbed."""
    path = tmp_path / "c.log"
    done = subprocess.run(
        [sys.executable, "-c", _FORK_IN_A_TRANSACTION, str(path), KEY],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "refused:" in done.stdout and "forked while a transaction held the lock" in done.stdout
    with ConversationCodec(path, encryption_key=KEY) as codec:
        assert [m["id"] for m in codec.load() or []] == ["before", "parent"]


_FORKED_STORE_WRITERS = (
    r"""
import json, os, sys
from conversation_codec import ConversationStore
url, key, out = sys.argv[1:]
store = ConversationStore(url, encryption_key=key)
with store.open("before") as codec:
    codec.append({"id": "before"})
pid = os.fork()
side = "child" if pid == 0 else "parent"
acked = []
for i in range(60):
    with store.open(f"fork-{side}") as codec:  # each append its own transaction
        codec.append({"id": f"{side}-{i}"})
    acked.append(f"{side}-{i}")
"""
    + _WRITE_DOWN_AND_JOIN
)


@pytest.mark.postgres
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_postgres_store_opened_before_fork_serves_parent_and_child(
    tmp_path: Path, postgres_url: str
) -> None:
    """Each process gets connections of its own: through the parent's pool, the two
    interleaved statements on one session and hung."""
    done = subprocess.run(
        [sys.executable, "-c", _FORKED_STORE_WRITERS, postgres_url, KEY, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    store = ConversationStore(postgres_url, encryption_key=KEY)
    for side in ("parent", "child"):
        acked = json.loads((tmp_path / side).read_text())
        with store.open(f"fork-{side}") as codec:
            assert (
                [m["id"] for m in codec.load() or []] == acked == [f"{side}-{i}" for i in range(60)]
            )


_FORK_IN_A_POSTGRES_TRANSACTION = r"""
import os, sys
from conversation_codec import ConversationStore, StorageError
url, key, how = sys.argv[1:]
store = ConversationStore(url, encryption_key=key)
codec = store.open("fork-in-a-transaction")
codec.append({"id": "before"})
with codec.transaction():
    codec.append({"id": "parent, in the transaction"})
    pid = os.fork()
    if pid == 0:
        if how == "write":
            try:
                codec.append({"id": "child, in the parent's transaction"})
            except StorageError as exc:
                print("refused:", exc, flush=True)
            os._exit(0)
        sys.exit(0)  # leaves the with-block: its exit must not end the parent's session
    os.waitpid(pid, 0)
    codec.append({"id": "parent, after the child"})
codec.append({"id": "parent, after the transaction"})
"""


@pytest.mark.postgres
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("how", ["write", "exit"])
def test_a_child_forked_inside_a_postgres_transaction_leaves_it_to_the_parent(
    tmp_path: Path, postgres_url: str, how: str
) -> None:
    """The transaction's session is the parent's: the child's write through it is a library
    error (it was silently lost), and the child's way out sends nothing on it (its
    ROLLBACK ended the parent's transaction, and the conversation no longer read)."""
    store = ConversationStore(postgres_url, encryption_key=KEY)
    store.delete("fork-in-a-transaction")
    done = subprocess.run(
        [sys.executable, "-c", _FORK_IN_A_POSTGRES_TRANSACTION, postgres_url, KEY, how],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    if how == "write":
        assert "refused:" in done.stdout and "forked while a transaction held it" in done.stdout
    with store.open("fork-in-a-transaction") as codec:
        assert [m["id"] for m in codec.load() or []] == [
            "before",
            "parent, in the transaction",
            "parent, after the child",
            "parent, after the transaction",
        ]
