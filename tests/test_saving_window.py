"""save() under ``max_messages`` against a plain-Python model, on every storage (review r1, 4 5).

The model: the caller holds the list its latest ``load()`` (or complete iteration, or
successful ``save()``) handed it, beginning at record ``origin``; it changes that list
(grows, edits, trims, empties it, trims its front to the window) and saves it. Records
before ``origin`` stay; the rest equals the list. All messages are distinct, so no save of
a list derived that way may raise ``ConflictError`` — except a rewrite after this instance's
own ``append()`` the list does not hold, which needs a ``load()`` first (``test_saving``).
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conversation_codec import ConversationCodec, ConversationStore, generate_key
from conversation_codec.errors import ConflictError

KEY = generate_key()
N = 3  # max_messages
Message = dict[str, str]
# (windowed codec, a codec without max_messages on the same log or None): memory logs are
# private to their codec, so there the hidden records are checked by popping them at the
# end; after every step, the window is checked by tail() (which leaves save()'s view).
Pair = tuple[ConversationCodec, ConversationCodec | None]
OpenPair = Callable[..., Pair]
OPS = (
    "load",
    "iterate",
    "save_grow",
    "save_edit",
    "save_trim",
    "save_empty",
    "save_same",
    "save_window",
    "pop",
    "append_held",
    "append_unheld",
)


@pytest.fixture(params=["file", "memory", pytest.param("postgres", marks=pytest.mark.postgres)])
def open_pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenPair]:
    """Open a new log (one per name) with a window of ``window``, and a full view of it."""
    opened: list[ConversationCodec] = []
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None

    def make(name: str, window: int = N, key: str | None = KEY) -> Pair:
        full: ConversationCodec | None = None
        if request.param == "file":
            path = tmp_path / f"{name}.log"
            codec = ConversationCodec(
                path, encryption_key=key, max_messages=window, durability="flush"
            )
            full = ConversationCodec(path, encryption_key=key, durability="flush")
        elif request.param == "memory":
            codec = ConversationCodec(":memory:", encryption_key=key, max_messages=window)
        else:
            assert url is not None
            ident = hashlib.sha256(f"{request.node.nodeid}/{name}".encode()).hexdigest()[:24]
            codec = ConversationStore(url, encryption_key=key, max_messages=window).open(ident)
            full = ConversationStore(url, encryption_key=key).open(ident)
        opened.extend(c for c in (codec, full) if c is not None)
        return codec, full

    yield make
    for codec in opened:
        codec.close()


def _texts(messages: list[Message]) -> list[str]:
    return [m["content"] for m in messages]


def _everything(codec: ConversationCodec) -> list[Message]:
    """Every stored message, hidden ones included: each pop() brings the next into view."""
    out = []
    while (message := codec.pop()) is not None:
        out.append(message)
    return out[::-1]


def run_model(seed: int, pair: Pair, steps: int, window: int = N) -> list[str]:
    """Random operations (fixed by ``seed``) on a log with a window of ``window``, each
    checked against the model; returns the trail (for the failure message)."""
    codec, full = pair
    rnd = random.Random(seed)
    fresh = (f"m{i}" for i in itertools.count())

    def new() -> Message:
        return {"role": "user", "content": next(fresh)}

    stored: list[Message] = []  # every record, hidden ones too
    for _ in range(rnd.randint(0, 7)):
        stored.append(new())
        codec.append(stored[-1])
    held: list[Message] = codec.load() or []  # the caller's list
    origin = len(stored) - len(held)  # the record it begins at
    whole = True  # this instance was handed (or gave) the whole history since it changed
    trail = [f"seed {seed}: {_texts(stored)}, load"]
    for _ in range(steps):
        op = rnd.choice(OPS)
        lst, begins = list(held), origin  # the list to save, and where it begins
        if op in ("load", "iterate"):
            held = (codec.load() or []) if op == "load" else list(codec)
            origin, whole = len(stored) - len(held), True
        elif op == "pop":
            got = codec.pop()
            assert got == (stored.pop() if stored else None), "\n".join(trail)
            if origin > len(stored):
                origin = len(stored)  # the caller's list lost its first message too
            held = held[: len(stored) - origin]
        elif op.startswith("append"):
            holds = op == "append_held" and held == stored[origin:]  # (not a stale list)
            stored.append(new())
            codec.append(stored[-1])
            whole = False  # a change the caller was not handed: a rewrite needs a load()
            if holds:
                held.append(stored[-1])
        elif op == "save_grow":
            lst += [new() for _ in range(rnd.randint(1, 3))]
        elif op == "save_edit" and lst:
            lst[rnd.randrange(len(lst))] = new()
        elif op == "save_trim" and lst:
            lst = lst[: rnd.randrange(len(lst))]
        elif op == "save_empty":
            lst = []
        elif op == "save_window" and held == stored[origin:] and len(held) > window:
            lst = lst[-window:]  # the caller keeps what the window shows, then edits, grows
            begins = len(stored) - window
            if window > 1 and rnd.random() < 0.5:
                lst[rnd.randrange(1, window)] = new()
            lst.append(new())
        if op.startswith("save"):
            rewrites = lst[: len(stored) - begins] != stored[begins:]
            try:
                codec.save(lst)
            except ConflictError:
                trail.append(f"{op} {_texts(lst)}: ConflictError")
                # Only a rewrite after its own append() (the list does not hold) is refused.
                assert rewrites and not whole, "\n".join(trail)  # and nothing changed (below)
            else:
                trail.append(f"{op} {_texts(lst)}")
                assert not (rewrites and not whole), "\n".join(trail)
                stored = stored[:begins] + lst
                held, origin, whole = lst, begins, True
        else:
            trail.append(f"{op}: {_texts(stored)}, the list {_texts(held)} from {origin}")
        assert codec.tail(window) == stored[-window:], "\n".join(trail)
        if full is not None:
            assert (full.load() or []) == stored, "\n".join(trail)
    if full is None:
        assert _everything(codec) == stored, "\n".join(trail)
    return trail


def test_saves_of_the_list_handed_out_last_follow_the_model(open_pair: OpenPair) -> None:
    # 5 seeds x 60 operations per storage: ~300 saves, loads, pops and appends.
    for seed in range(5):
        run_model(seed, open_pair(f"s{seed}"), steps=60)


@pytest.mark.slow
@pytest.mark.parametrize("window", [1, 2, 3, 5])
@pytest.mark.parametrize("key", [KEY, None], ids=["sealed", "plain"])
def test_saves_of_the_list_handed_out_last_follow_the_model_sweep(
    open_pair: OpenPair, window: int, key: str | None
) -> None:
    for seed in range(150):
        run_model(1000 + seed, open_pair(f"s{seed}", window, key), steps=80, window=window)
