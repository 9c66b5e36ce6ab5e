"""Every writer under I/O errors and power loss, through one harness (``tests/_faults.py``).

The default run fails a fixed sample of each writer's seam calls (the first, the last and a
few between, chosen by a seed fixed per writer) and checks a fixed sample of crash images;
``-m slow`` fails every call with ``EIO`` and ``ENOSPC``, once and for good, and checks
images at every crash point. ``pytest -s -k fault_points`` (or ``python -m tests._faults``)
prints the fault points per writer.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from _faults import (
    BY_NAME,
    KINDS,
    WRITERS,
    PowerLossIO,
    Writer,
    fault_points,
    interrupted,
    io_fault,
    power_losses,
    sample,
    table,
)
from conversation_codec import FileIO

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="names files through /proc/self/fd"
)

NAMES = [w.name for w in WRITERS]
SAMPLED_CALLS = 4  # per writer in the default run: the first, the last and 2 between
SAMPLED_IMAGES = 8  # per writer in the default run (the last, at the last point, an ordered one)
STEPPED = {"log append", "log truncate", "log rewrite", "migrate", "migrate to dst"}


def test_every_writer_has_fault_points(tmp_path: Path) -> None:
    """The table the issue asks for; every writer goes through the seam at least once."""
    points = table(tmp_path)
    assert list(points) == NAMES
    for name, p in points.items():
        print(f"{name + ':':<15} {p}")
        assert p.total > 0, f"{name} makes no call through the FileIO seam"
    kinds = {kind for p in points.values() for kind in p.calls}
    assert kinds == set(KINDS), "between them the writers make every kind of seam call"
    assert points["migrate"].calls["link"] == 1, "the backup is linked into place"
    assert points["keygen"].calls["fsync_dir"] == 1, "keygen --out syncs the directory"
    merge = points["keyword index merge"].calls  # durability "flush" (FORMAT.md §17.5)
    assert merge["rename"] == 1 and merge["sync"] == merge["fsync_dir"] == 0, merge


@pytest.mark.parametrize("name", NAMES)
def test_io_error_at_sampled_calls(tmp_path: Path, name: str) -> None:
    writer = BY_NAME[name]
    total = fault_points(writer, tmp_path / "count").total
    for i, nth in enumerate(sample(total, SAMPLED_CALLS, name)):
        err = (errno.EIO, errno.ENOSPC)[i % 2]
        io_fault(writer, tmp_path / f"n{nth}", nth, err, persistent=i % 3 == 2)


@pytest.mark.slow
@pytest.mark.parametrize("persistent", [False, True], ids=["once", "persistent"])
@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC], ids=["EIO", "ENOSPC"])
@pytest.mark.parametrize("name", NAMES)
def test_io_error_at_every_call(tmp_path: Path, name: str, err: int, persistent: bool) -> None:
    writer = BY_NAME[name]
    total = fault_points(writer, tmp_path / "count").total
    for nth in range(1, total + 1):
        io_fault(writer, tmp_path / f"n{nth}", nth, err, persistent)


@pytest.mark.parametrize("name", NAMES)
def test_power_loss_at_sampled_points(tmp_path: Path, name: str) -> None:
    found = power_losses(BY_NAME[name], tmp_path, SAMPLED_IMAGES, name)
    assert sum(found.values()) == SAMPLED_IMAGES


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_power_loss_at_every_point(tmp_path: Path, name: str) -> None:
    found = power_losses(BY_NAME[name], tmp_path, None, name, per_point=8)
    print(f"{name}: {dict(found)}")


@pytest.mark.parametrize("name", [w.name for w in WRITERS if w.name in STEPPED])
def test_interrupted_at_every_step(tmp_path: Path, name: str) -> None:
    """An exception at each ``FileIO.step`` mark (as a KeyboardInterrupt would raise):
    the old or the new state, and the new one from the commit point on."""
    writer = BY_NAME[name]
    steps = fault_points(writer, tmp_path / "count").steps
    states = [interrupted(writer, tmp_path / f"s{k}", k) for k in range(1, steps + 1)]
    assert states == sorted(states, key=("old", "new").index), f"back to old: {states}"


# --- the harness can fail ------------------------------------------------------------------


def _raw(folder: Path) -> bytes:
    return (folder / "data").read_bytes()


def _in_place_prepare(folder: Path) -> None:
    (folder / "data").write_bytes(b"old " * 64)


def _in_place_act(folder: Path, io: FileIO, ctx: Any) -> None:
    """Overwrite a file in place, no temp file: a power loss can leave a mix."""
    fd = os.open(folder / "data", os.O_WRONLY)
    try:
        for i in range(0, 256, 64):
            io.pwrite(fd, b"new " * 16, i)
        io.sync(fd, data_only=False)
    finally:
        os.close(fd)


def _in_place_state(folder: Path, ctx: Any) -> str:
    data = _raw(folder)
    if data == b"old " * 64:
        return "old"
    assert data == b"new " * 64, f"a mix: {data[:40]!r}"
    return "new"


def test_the_power_loss_check_catches_a_write_in_place(tmp_path: Path) -> None:
    naive = Writer("in place", _in_place_prepare, _in_place_act, _in_place_state, None)
    with pytest.raises(AssertionError, match="a mix"):
        power_losses(naive, tmp_path, 40, "in place")


def test_the_io_error_check_catches_a_foreign_error(tmp_path: Path) -> None:
    naive = Writer("in place", _in_place_prepare, _in_place_act, _in_place_state, None)
    with pytest.raises(AssertionError, match="not a library error"):
        io_fault(naive, tmp_path / "run", 2, errno.EIO, persistent=False)


def test_the_recorder_catches_a_write_around_the_seam(tmp_path: Path) -> None:
    _in_place_prepare(tmp_path)
    rec = PowerLossIO(tmp_path)
    (tmp_path / "data").write_bytes(b"behind the seam's back")
    fd = os.open(tmp_path / "data", os.O_WRONLY)
    try:
        with pytest.raises(AssertionError, match="bypassed the FileIO seam"):
            rec.pwrite(fd, b"x", 0)
    finally:
        os.close(fd)


def _outside_act(folder: Path, io: FileIO, ctx: Any) -> None:
    _in_place_act(folder, io, ctx)
    (folder / "other").write_bytes(b"written with plain open()")


def test_the_model_check_catches_a_file_written_outside_the_seam(tmp_path: Path) -> None:
    sneaky = Writer("sneaky", _in_place_prepare, _outside_act, _in_place_state, None)
    with pytest.raises(AssertionError, match="other was written outside the FileIO seam"):
        power_losses(sneaky, tmp_path, 4, "sneaky")


def test_the_secret_check_catches_plaintext(tmp_path: Path) -> None:
    leaky = Writer(
        "leaky",
        _in_place_prepare,
        lambda folder, io, ctx: _in_place_act(folder, io, ctx),
        _in_place_state,
        secret=b"new ",
        errors=(OSError,),
    )
    with pytest.raises(AssertionError, match="plaintext"):
        io_fault(leaky, tmp_path / "run", 5, errno.EIO, persistent=False)
