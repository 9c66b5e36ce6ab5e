"""Key files: create once (0600, atomically), load, refuse unsafe or damaged ones, and
agree on one key when several real processes create it at the same moment."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import _children
import conversation_codec
from conversation_codec import ConversationCodec, FormatError, StorageError
from conversation_codec.keyfile import KeyFileError, create_key_file, load_key, load_or_create_key

KEY = "Qa3EwCEJr-ZK8_Wj1Z7pHqHDe7Ubwf2PY1M1hF_zqLk="  # tests only


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.write_bytes(data)
    os.chmod(path, mode)


def _state(path: Path) -> tuple[bytes, int, int]:
    st = path.stat()
    return path.read_bytes(), st.st_mtime_ns, st.st_ino


# -- creating and loading --------------------------------------------------------------


def test_creates_a_private_key_file_once(tmp_path: Path) -> None:
    path = tmp_path / "chat.key"
    key = load_or_create_key(path)
    assert path.read_bytes() == key.encode() + b"\n"
    assert _mode(path) == 0o600
    assert os.listdir(tmp_path) == ["chat.key"]  # the temp name is gone
    before = _state(path)
    assert load_or_create_key(path) == key
    assert _state(path) == before  # loading never rewrites
    with ConversationCodec(tmp_path / "chat.log", encryption_key=key) as codec:
        codec.append({"role": "user", "content": "hi"})  # a usable Fernet key


def test_created_mode_ignores_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        load_or_create_key(tmp_path / "k")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "k") == 0o600


def test_creates_missing_parent_directories_private(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "chat.key"
    key = load_or_create_key(path)
    assert load_or_create_key(str(path)) == key
    assert _mode(path.parent) & 0o077 == 0


@pytest.mark.parametrize("text", [KEY, KEY + "\n", KEY + "\r\n", f"  {KEY}\n\n", "\n" + KEY])
def test_loads_a_key_written_by_hand(tmp_path: Path, text: str) -> None:
    path = tmp_path / "k"
    _write(path, text.encode())
    assert load_or_create_key(path) == KEY


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700, 0o200])
def test_owner_only_modes_are_accepted(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "k"
    _write(path, KEY.encode(), 0o600)
    os.chmod(path, mode)
    if mode & 0o400 == 0 and os.geteuid() == 0:
        assert load_or_create_key(path) == KEY  # root reads it anyway
    elif mode & 0o400 == 0:
        with pytest.raises(StorageError, match="cannot open key file"):
            load_or_create_key(path)
    else:
        assert load_or_create_key(path) == KEY


def test_follows_a_symlink_to_a_private_key(tmp_path: Path) -> None:
    _write(tmp_path / "real.key", KEY.encode())
    os.symlink(tmp_path / "real.key", tmp_path / "link.key")
    assert load_or_create_key(tmp_path / "link.key") == KEY


# -- refusing --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o610, 0o601, 0o620, 0o602, 0o660, 0o666])
def test_refuses_a_key_file_others_can_reach(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "k"
    _write(path, KEY.encode(), mode)
    before = _state(path)
    with pytest.raises(KeyFileError, match=f"mode {mode:04o}.*chmod 600") as info:
        load_or_create_key(path)
    assert KEY not in str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, conversation_codec.ConversationCodecError)
    assert _state(path) == before and _mode(path) == mode  # untouched, not "fixed"


def test_refuses_a_world_readable_key_through_a_symlink(tmp_path: Path) -> None:
    _write(tmp_path / "real.key", KEY.encode(), 0o644)
    os.symlink(tmp_path / "real.key", tmp_path / "link.key")
    with pytest.raises(KeyFileError, match="0644"):
        load_or_create_key(tmp_path / "link.key")


@pytest.mark.parametrize("data", [b"", b"\n", b"  \r\n\t"])
def test_refuses_an_empty_key_file_and_never_regenerates(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "k"
    _write(path, data)
    before = _state(path)
    with pytest.raises(FormatError, match="is empty; restore the key"):
        load_or_create_key(path)
    assert _state(path) == before
    assert os.listdir(tmp_path) == ["k"]


@pytest.mark.parametrize(
    "data",
    [
        b"not a key",
        KEY[:-2].encode(),  # 42 characters
        (KEY + "A").encode(),  # 45 characters
        (KEY + "\n" + KEY).encode(),  # two keys
        KEY.replace("-", "+").encode() + b"\x00",
        b"\xff\xfe" + KEY.encode(),
        b"x" * 5000,  # more than a key file can be
        b"y0XojHGqVqvD6Uw2uH_FU5nTh1DsJiTlwhUyDRyIWCs" + b"!",  # a bad last character
    ],
)
def test_refuses_a_malformed_key_file_without_quoting_it(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "k"
    _write(path, data)
    before = _state(path)
    with pytest.raises(FormatError, match="does not hold a Fernet key") as info:
        load_or_create_key(path)
    assert data.decode("latin-1")[:20] not in str(info.value)
    assert _state(path) == before


def test_refuses_a_directory(tmp_path: Path) -> None:
    (tmp_path / "k").mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_or_create_key(tmp_path / "k")


def test_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "k", 0o600)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_or_create_key(tmp_path / "k")


def test_refuses_a_dangling_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    os.symlink(tmp_path / "gone.key", tmp_path / "k")
    with pytest.raises(KeyFileError, match="symlink to a missing file"):
        load_or_create_key(tmp_path / "k")
    assert not (tmp_path / "gone.key").exists()


def test_uncreatable_key_file_is_a_storage_error(tmp_path: Path) -> None:
    # A parent that is a regular file: refused even for root, which writes anywhere else.
    (tmp_path / "not-a-dir").write_bytes(b"")
    with pytest.raises(StorageError):
        load_or_create_key(tmp_path / "not-a-dir" / "k")


# -- concurrent creators ---------------------------------------------------------------

_RACER = """
import json, os, sys, time
from conversation_codec.keyfile import load_or_create_key
folder, go, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
while not os.path.exists(go):
    time.sleep(0.001)
print(json.dumps([load_or_create_key(os.path.join(folder, f"k{i}")) for i in range(rounds)]))
"""


def _env() -> dict[str, str]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(conversation_codec.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def test_concurrent_processes_agree_on_one_key(tmp_path: Path) -> None:
    procs, rounds = 6, 40
    go = tmp_path / "go"
    racers = [
        _children.Popen(
            [sys.executable, "-c", _RACER, str(tmp_path), str(go), str(rounds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(),
            text=True,
        )
        for _ in range(procs)
    ]
    time.sleep(0.5)  # let every racer import and start polling
    go.touch()
    results = []
    for racer in racers:
        out, err = racer.communicate(timeout=60)
        assert racer.returncode == 0, err
        results.append(json.loads(out))
    for i in range(rounds):
        stored = (tmp_path / f"k{i}").read_text().strip()
        assert {keys[i] for keys in results} == {stored}, f"key file k{i}"
        assert _mode(tmp_path / f"k{i}") == 0o600
    assert sorted(os.listdir(tmp_path)) == sorted(["go", *(f"k{i}" for i in range(rounds))])


def _race_threads(path: Path, n: int = 8) -> set[str]:
    keys: list[str] = []
    barrier = threading.Barrier(n)

    def run() -> None:
        barrier.wait()
        keys.append(load_or_create_key(path))

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == n
    return set(keys)


def test_concurrent_threads_agree_on_one_key(tmp_path: Path) -> None:
    for i in range(20):
        assert _race_threads(tmp_path / f"k{i}") == {(tmp_path / f"k{i}").read_text().strip()}


def test_without_hard_links_creation_falls_back_to_exclusive_create(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file system without hard links (FAT, some FUSE mounts): os.link fails with EPERM.
    def no_link(src: object, dst: object, **dir_fds: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    key = load_or_create_key(tmp_path / "k")
    assert load_or_create_key(tmp_path / "k") == key
    assert _mode(tmp_path / "k") == 0o600
    assert os.listdir(tmp_path) == ["k"]
    for i in range(10):
        assert _race_threads(tmp_path / f"r{i}") == {(tmp_path / f"r{i}").read_text().strip()}


def test_other_link_failures_are_storage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_link(src: object, dst: object, **dir_fds: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "link", broken_link)
    with pytest.raises(StorageError, match="cannot create key file"):
        load_or_create_key(tmp_path / "k")
    assert os.listdir(tmp_path) == []  # the temp file is cleaned up


def test_create_key_file_publishes_a_new_0600_key_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "new.key"
    key = create_key_file(path)
    assert load_key(path) == key and _mode(path) == 0o600
    with pytest.raises(KeyFileError, match="already exists"):
        create_key_file(path)
    assert load_key(path) == key  # the existing key is untouched
    assert os.listdir(tmp_path) == ["new.key"]  # no temp file left behind


def test_create_key_file_without_hard_links_creates_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(src: object, dst: object, **dir_fds: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    key = create_key_file(tmp_path / "k")
    assert load_key(tmp_path / "k") == key and os.listdir(tmp_path) == ["k"]
    with pytest.raises(KeyFileError):
        create_key_file(tmp_path / "k")
