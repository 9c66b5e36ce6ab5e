"""Secrets: no plaintext in any file the library writes, and no key anywhere it could leak.

Every ``os.write``/``os.pwrite`` the library makes (log, index, lock, rewrite temp files,
migration temp files, attachment blobs and their temp files, backups — every byte it writes
goes through one of the two) is captured with the path it went to, and the whole directory
tree is snapshotted at every step of every write procedure (the ``fault`` seams of the log
and of ``migrate``) and at the end. With encryption on, none of it may hold a fragment of
any message: the text of every string in the messages (12-character windows), the raw
bytes and the base64 of attachments. The one exception is by nature: the ``.bak`` copy
``migrate`` keeps of a plaintext source the user gave (and its temp file) is that plaintext.

Keys: no master key (as given, its raw bytes, its halves, hex, standard base64), no key
derived from it for a log, nor a password, may appear in any file, in the ``str``/``repr``/
traceback of any error (wrong key, missing key, near-miss keys, a key with a newline),
in the ``repr`` of codecs, keyrings, ciphers and stores, or in any log record (DEBUG).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from conversation_codec import ConversationCodec, ConversationCodecError, generate_key
from conversation_codec.aio import AsyncConversationCodec
from conversation_codec.attachments import BlobStore
from conversation_codec.crypto import Keyring, LogCipher
from conversation_codec.keyfile import load_or_create_key
from conversation_codec.maintenance.migrate import migrate
from conversation_codec.maintenance.verify import salvage
from conversation_codec.store import ConversationStore

from conftest import KEY, OTHER_KEY, Clock, Steps

Message = dict[str, Any]
PASSWORD = "correct horse battery staple 7f3a"
NEW_PASSWORD = "tr0ub4dor & 3 -- second secret"
LEGACY_KEY = "lQ1xRHdNGhJkQvM5Nrr3nUpBd2ZtLxFQqzRdHy4YI5E="
PNG = bytes(range(256)) * 3 + b"secret-picture-bytes-0123456789"  # an attachment's raw bytes
WINDOW = 12  # characters of message text that must never appear in a file


def secret_messages(tag: str, n: int, start: int = 0) -> list[Message]:
    """Messages whose every string is distinctive, with tool calls and (every 5th) an image."""
    out: list[Message] = []
    for i in range(start, start + n):
        m: Message = {
            "role": "user" if i % 2 else "assistant",
            "content": f"{tag} confidential note {i}: the vault code is {i * 7919 % 100_000:05d}",
            "tool_calls": [
                {
                    "id": f"call_{tag}_{i}",
                    "function": {
                        "name": "lookup_account",
                        "arguments": f'{{"ssn": "{tag}-{i:04d}"}}',
                    },
                }
            ],
        }
        if i % 5 == 0:
            data = base64.b64encode(PNG + str(i).encode()).decode()
            m["content"] = [
                {"type": "text", "text": f"{tag} look at this scan number {i}"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
            ]
        out.append(m)
    return out


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _windows(data: bytes, size: int) -> set[bytes]:
    return {data[i : i + size] for i in range(max(1, len(data) - size + 1))}


def plaintext_needles(messages: list[Message]) -> set[bytes]:
    """Byte strings that would betray the messages: text windows, attachment bytes."""
    needles: set[bytes] = set()
    for m in messages:
        for s in _strings(m):
            if s.startswith("data:"):
                payload = s.split(",", 1)[1]
                needles |= _windows(payload.encode(), 24)
                needles |= _windows(base64.b64decode(payload)[-40:], 16)
            elif len(s) >= WINDOW and s not in ("lookup_account", "image_url"):
                needles |= _windows(s.encode(), WINDOW)
    return needles


def key_needles(*keys: str) -> tuple[set[bytes], set[str]]:
    """(binary, text) fragments of keys: raw bytes, halves, base64 both ways, hex."""
    binary: set[bytes] = set()
    text: set[str] = set()
    for key in keys:
        raw = base64.urlsafe_b64decode(key)
        forms = [key, base64.b64encode(raw).decode(), raw.hex(), repr(raw)[2:-1]]
        for form in forms:
            text |= {form[i : i + 16] for i in range(len(form) - 15)}
        binary |= _windows(raw, 8) | {t.encode() for t in text}
    return binary, text


def derived_keys(key: str, log: Path) -> list[bytes]:
    """The per-log keys (FORMAT.md §4) and the blob keys derived from ``key``."""
    raw = base64.urlsafe_b64decode(key)
    log_id = log.read_bytes()[16:32]
    okm = HKDF(hashes.SHA256(), 64, log_id, b"conversation-codec/1 log keys").derive(raw)
    blob = HKDF(hashes.SHA256(), 64, None, b"conversation-codec/1 blob keys").derive(raw)
    return [okm[:16], okm[16:32], okm[32:], blob[:16], blob[16:32], blob[32:]]


def _unnamed(folder: str, inode: int) -> str:
    """The path a write to an unnamed (``O_TMPFILE``) file is recorded under."""
    return os.path.join(folder, f"<unnamed inode {inode}>")


class Capture:
    """Every write the library makes under ``root``, and snapshots of the tree."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.writes: list[tuple[str, bytes]] = []
        self.snapshots = 0
        self.files: dict[str, set[bytes]] = {}  # every version of every file seen

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_write, real_pwrite = os.write, os.pwrite

        def write(fd: int, data: Any) -> int:
            n = real_write(fd, data)
            self._record(fd, bytes(data[:n]))
            return n

        def pwrite(fd: int, data: Any, offset: int) -> int:
            n = real_pwrite(fd, data, offset)
            self._record(fd, bytes(data[:n]))
            return n

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "pwrite", pwrite)

    def _record(self, fd: int, data: bytes) -> None:
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return
        if path.startswith(self.root):
            st = os.fstat(fd)
            if st.st_nlink == 0:  # an unnamed file (O_TMPFILE): named at a snapshot once linked
                path = _unnamed(os.path.dirname(path), st.st_ino)
            self.writes.append((path, data))

    def snapshot(self, step: str = "") -> None:
        self.snapshots += 1
        names_of: dict[str, str] = {}  # unnamed placeholder -> the name it was linked in as
        for folder, _, names in os.walk(self.root):
            for name in names:
                p = os.path.join(folder, name)
                with contextlib.suppress(OSError):
                    names_of[_unnamed(folder, os.lstat(p).st_ino)] = p
                try:
                    data = Path(p).read_bytes()
                except OSError:
                    continue
                self.files.setdefault(p, set()).add(data)
        self.writes = [(names_of.get(p, p), data) for p, data in self.writes]

    def blobs(self, exclude: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
        for path, data in self.writes:
            if not exclude(path):
                yield path, data
        for path, versions in self.files.items():
            if not exclude(path):
                for data in versions:
                    yield path, data


def _find(needles: set[bytes], blobs: Iterator[tuple[str, bytes]]) -> list[str]:
    """Each blob that holds one of ``needles``, with a needle it holds (see _Needles)."""
    by_size = _Needles(needles)
    found: dict[bytes, bytes | None] = {}  # equal blobs are searched once
    hits = []
    for path, data in blobs:
        if data not in found:
            found[data] = by_size.first_in(data)
        needle = found[data]
        if needle is not None:
            hits.append(f"{path}: {needle[:40]!r}")
    return hits


class _Needles:
    """Needles grouped by length, each group searched in a blob at once.

    ``needle in data`` for each of ~10,000 needles scanned every blob 10,000 times (~10 s a
    run). A few needles are still looked for so; a large group is found by looking up each
    substring of its length in the group's set, and only where the blob holds a run of
    bytes that its needles are made of (``translate`` and a regular expression find those
    runs at C speed: in ciphertext they are rare). The same answer either way."""

    def __init__(self, needles: set[bytes]) -> None:
        self.groups: dict[int, set[bytes]] = {}
        for needle in needles:
            self.groups.setdefault(len(needle), set()).add(needle)
        self.runs: dict[int, tuple[bytes, re.Pattern[bytes]]] = {}
        for size, group in self.groups.items():
            used = set().union(*group)
            table = bytes(1 if b in used else 0 for b in range(256))
            self.runs[size] = (table, re.compile(b"\x01{%d,}" % max(size, 1)))

    def first_in(self, data: bytes) -> bytes | None:
        for size, group in self.groups.items():
            if len(group) <= 64 or size == 0:
                hit = next((needle for needle in group if needle in data), None)
            else:
                hit = self._by_lookup(data, size, group)
            if hit is not None:
                return hit
        return None

    def _by_lookup(self, data: bytes, size: int, group: set[bytes]) -> bytes | None:
        table, run_of = self.runs[size]
        for run in run_of.finditer(data.translate(table)):
            for i in range(run.start(), run.end() - size + 1):
                if data[i : i + size] in group:
                    return data[i : i + size]
        return None


@pytest.fixture
def capture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Capture:
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("names written files through /proc/self/fd")
    cap = Capture(tmp_path)
    cap.install(monkeypatch)
    return cap


def _codec_workload(path: Path, cap: Capture) -> list[Message]:
    """append, extend, save (appending and rewriting), pop, a dictionary, compact, rotate."""
    msgs = secret_messages("alpha", 530)
    steps = Steps(cap.snapshot)
    with ConversationCodec(
        path, encryption_key=KEY, attachments="external", clock=Clock(), io=steps
    ) as c:
        c.append(msgs[0])
        c.extend(msgs[1:4])
        c.save(msgs[:6])
        assert c.pop() == msgs[5]  # attachment restored (it was not before 71de437)
        c.save([msgs[7], *msgs[1:4]])  # divergent: rewritten through a temp file
        c.extend(msgs[8:525])  # past 512 messages: a dictionary record, sealed
        assert c.storage.index.dict_span != (0, 0)
        c.compact()  # retrains the dictionary on a sample of the whole history
        c.rotate_key(OTHER_KEY)
        c.replace([*msgs[525:], msgs[0]])
        c.append(msgs[10])
        final = [*msgs[525:], msgs[0], msgs[10]]
        assert c.load() == final
    return msgs


def _migrations(folder: Path, cap: Capture) -> tuple[list[Message], set[str], bytes]:
    """Migrate a plaintext JSONL (in place, with a backup) and a Fernet-encrypted one."""
    plain = secret_messages("bravo", 6)
    src = folder / "legacy.jsonl"
    original = "".join(json.dumps(m) + "\n" for m in plain).encode()
    src.write_bytes(original)
    report = migrate(src, encryption_key=KEY, io=Steps(cap.snapshot))
    assert report.converted and report.backup is not None
    sealed = secret_messages("charlie", 6)
    token = Fernet(LEGACY_KEY).encrypt("".join(json.dumps(m) + "\n" for m in sealed).encode())
    enc = folder / "legacy-fernet.jsonl"
    enc.write_bytes(token)
    migrate(enc, encryption_key=KEY, legacy_key=LEGACY_KEY, io=Steps(cap.snapshot))
    with ConversationCodec(src, encryption_key=KEY) as c:
        assert c.load() == plain
    with ConversationCodec(enc, encryption_key=KEY) as c:
        assert c.load() == sealed
    return plain + sealed, {str(report.backup)}, original  # the user's plaintext, copied


def _password_log(path: Path, cap: Capture) -> list[Message]:
    msgs = secret_messages("delta", 4)
    with ConversationCodec(path, password=PASSWORD, io=Steps(cap.snapshot)) as c:
        c.extend(msgs)
        c.change_password(PASSWORD, NEW_PASSWORD)
    with ConversationCodec(path, password=NEW_PASSWORD) as c:
        assert c.load() == msgs
    return msgs


def test_no_plaintext_or_key_in_any_written_file(
    tmp_path: Path, capture: Capture, caplog: pytest.LogCaptureFixture
) -> None:
    """Every write of every procedure, and every state of every file: ciphertext only."""
    caplog.set_level(logging.DEBUG)
    log = tmp_path / "chat.log"
    messages = _codec_workload(log, capture)
    migrated, users_plaintext, original = _migrations(tmp_path, capture)
    messages += migrated + _password_log(tmp_path / "pw.log", capture)
    capture.snapshot()

    def exclude(path: str) -> bool:  # the backup of a plaintext source, and its temp file
        return any(path == bak or path.startswith(bak + ".tmp-") for bak in users_plaintext)

    def theirs(blobs: Iterator[tuple[str, bytes]]) -> Iterator[tuple[str, bytes]]:
        return ((p, d) for p, d in blobs if d != original)  # the source, before migration

    paths = {p for p, _ in capture.writes}
    kinds = {".idx", ".lock", ".tmp-", ".migrating-", ".blobs/", ".bak"}
    seen = {k for k in kinds if any(k in p for p in paths)}
    assert seen == kinds, f"the capture missed a kind of file: {kinds - seen}"
    assert capture.snapshots > 20 and len(capture.writes) > 50
    print(f"{len(capture.writes)} writes to {len(paths)} files, {capture.snapshots} snapshots")

    leaks = _find(plaintext_needles(messages), theirs(capture.blobs(exclude)))
    assert not leaks, f"message plaintext in files: {leaks[:5]}"
    binary, _ = key_needles(KEY, OTHER_KEY, LEGACY_KEY)
    binary |= {PASSWORD.encode(), NEW_PASSWORD.encode()}
    binary |= set(derived_keys(OTHER_KEY, log))
    leaks = _find(binary, capture.blobs(lambda p: False))
    assert not leaks, f"key material in files: {leaks[:5]}"
    assert any(exclude(p) for p in paths), "the plaintext backup was expected to be written"
    _no_key_in_logs(caplog)


def _no_key_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    _, text = key_needles(KEY, OTHER_KEY, LEGACY_KEY)
    for record in caplog.records:
        rendered = f"{record.getMessage()} {record.args!r} {record.exc_text or ''}"
        assert not [t for t in text if t in rendered], f"key in a log record: {rendered[:200]}"
        assert PASSWORD not in rendered and NEW_PASSWORD not in rendered


def _error_text(call: Callable[[], object]) -> str:
    """Run a call that must fail; return everything its error would print."""
    try:
        call()
    except Exception as exc:
        return f"{exc} {exc!r} " + "".join(traceback.format_exception(exc))
    raise AssertionError("expected an error")


def test_no_key_in_errors_reprs_or_log_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Near-miss keys, wrong keys and passwords: no error, repr or log record shows a key."""
    caplog.set_level(logging.DEBUG)
    sealed, plain = tmp_path / "sealed.log", tmp_path / "plain.log"
    with ConversationCodec(sealed, encryption_key=KEY) as c:
        c.append({"role": "user", "content": "hi"})
    with ConversationCodec(plain) as c:
        c.append({"role": "user", "content": "hi"})
    pw = tmp_path / "pw.log"
    with ConversationCodec(pw, password=PASSWORD) as c:
        c.append({"role": "user", "content": "hi"})
    keyfile = tmp_path / "near-miss.key"
    keyfile.write_text(KEY[:-2] + "!=\n")
    keyfile.chmod(0o600)
    fernet = tmp_path / "legacy.jsonl"
    fernet.write_bytes(Fernet(LEGACY_KEY).encrypt(b'{"role": "user", "content": "x"}\n'))
    # Keys a user may pass by mistake, near a real one: the codec must never echo them.
    near_misses = [KEY[:-1], KEY + "A", KEY.replace("-", "+"), " " + KEY, KEY + "\n"]
    failing: list[Callable[[], object]] = [
        lambda: ConversationCodec(sealed, encryption_key=OTHER_KEY),
        lambda: ConversationCodec(sealed, encryption_key=[OTHER_KEY, generate_key()]),
        lambda: ConversationCodec(sealed),
        lambda: ConversationCodec(plain, encryption_key=KEY),
        lambda: ConversationCodec(pw, password=NEW_PASSWORD),
        lambda: ConversationCodec(pw, encryption_key=KEY),
        lambda: Keyring.from_input([KEY, KEY[:30]]),
        lambda: load_or_create_key(keyfile),
        lambda: migrate(fernet, encryption_key=KEY, legacy_key=OTHER_KEY),
        lambda: ConversationCodec(sealed, encryption_key=KEY[:-2] + "x="),  # valid, wrong
        lambda: migrate(fernet, encryption_key=KEY[:-1], legacy_key=LEGACY_KEY),
        lambda: BlobStore.for_key(tmp_path / "b", KEY[:40]),
    ]
    failing += [
        (lambda k=k: ConversationCodec(tmp_path / "new.log", encryption_key=k))  # type: ignore[misc]
        for k in near_misses
    ]
    with ConversationCodec(sealed, encryption_key=KEY) as c:
        failing.append(lambda: c.rotate_key(KEY[:-3] + "==="))
        failing.append(lambda: c.change_password(PASSWORD, NEW_PASSWORD))
        texts = [_error_text(call) for call in failing]
        reprs = [repr(c), str(c), repr(c.storage.fmt), repr(c.info()), repr(c.verify())]
    keyring = Keyring.from_input([KEY, OTHER_KEY])
    cipher, _ = LogCipher.create(keyring, _header_fields())
    reprs += [repr(keyring), repr(cipher), repr(BlobStore.for_key(tmp_path / "b", KEY))]
    reprs += [repr(ConversationStore(tmp_path / "store", encryption_key=KEY))]
    reprs += [repr(asyncio.run(AsyncConversationCodec.open(sealed, encryption_key=KEY)))]
    reprs += [repr(salvage(sealed, tmp_path / "salvaged.log", encryption_key=KEY))]
    _, text = key_needles(KEY, OTHER_KEY, LEGACY_KEY)
    text |= {m[i : i + 16] for m in [*near_misses, KEY[:-2] + "x="] for i in range(len(m) - 15)}
    for what in texts + reprs:
        shown = [t for t in text if t in what]
        assert not shown, f"key material shown: {shown[0]!r} in {what[:300]!r}"
        assert PASSWORD not in what and NEW_PASSWORD not in what
    assert all(isinstance(t, str) for t in texts)
    _no_key_in_logs(caplog)


def _header_fields() -> Any:
    from conversation_codec.format.header import SealedHeader

    return SealedHeader(os.urandom(16))


def test_capture_sees_plaintext_when_there_is_some(tmp_path: Path, capture: Capture) -> None:
    """The detector is not blind: a plaintext log's writes, and snapshots, are flagged."""
    msgs = secret_messages("echo", 3)
    with ConversationCodec(tmp_path / "plain.log", io=Steps(capture.snapshot)) as c:
        c.extend(msgs)
        c.load()  # a divergent save() rewrites only a history read in full (issue 11)
        c.save(msgs[::-1])
    capture.snapshot()
    assert _find(plaintext_needles(msgs), iter(capture.writes))
    assert _find(plaintext_needles(msgs), capture.blobs(lambda p: False))
    binary, _ = key_needles(KEY)
    assert _find(binary, iter([("k", b"xx" + base64.urlsafe_b64decode(KEY)[5:20])]))


def test_open_codecs_leave_no_plaintext_on_errors(tmp_path: Path, capture: Capture) -> None:
    """A rejected message or a failed rewrite must not leave its plaintext in a file."""
    path = tmp_path / "chat.log"
    secret = secret_messages("foxtrot", 2)
    steps = Steps()
    with ConversationCodec(path, encryption_key=KEY, io=steps) as c:
        c.append(secret[0])
        with pytest.raises(ConversationCodecError):
            c.append({"role": "user", "content": secret[1]["content"], "bad": {1, 2}})
        steps.on_step = _fail_at("rewrite:temp-written")
        c.load()  # else save() stops at ConflictError (a RuntimeError) before the rewrite
        with pytest.raises(RuntimeError, match="temp-written"):
            c.save([secret[1]])
    capture.snapshot()
    assert not _find(plaintext_needles(secret), capture.blobs(lambda p: False))
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def _fail_at(step: str) -> Callable[[str], None]:
    def fault(now: str) -> None:
        if now == step:
            raise RuntimeError(f"injected at {step}")

    return fault


def test_pop_returns_the_message_with_its_attachment(tmp_path: Path) -> None:
    """pop() returns the message that was appended, attachment data included."""
    message = secret_messages("golf", 1)[0]
    with ConversationCodec(tmp_path / "chat.log", encryption_key=KEY, attachments="external") as c:
        c.append(message)
        assert c.get(0) == message
        assert c.pop() == message
