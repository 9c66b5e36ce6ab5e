"""The ``conversation-codec`` command: a thin layer over the library.

Each command opens a log (or a store root), calls one library method and prints the result.
Library errors become one ``error: ...`` line in :func:`_report`, the only place that picks
exit codes: 0 ok, 1 library or input error, 2 usage, 3 corruption found.

Secrets never come from argv and are never printed. A key comes from an environment variable
(``--key-env``, default ``CONVERSATION_KEY``) or a private file (``--key-file``, refused when
group or others can read it, as ``keyfile.load_key`` rules); a password from the variable
named by ``--password-env``. ``keygen`` is the exception on purpose: it prints a new key so
it can be piped into a secret store. A usage error never repeats the value given (a value
typed in the wrong place may be a secret), and no error prints a key-shaped value.

Plaintext is never written by accident: a command that writes a log (``append``, ``import``,
``compact``, ``salvage``, ``migrate``) with no key source (an unset key variable, no
``--key-file``, no ``--password-env``) needs ``--plain``; without it, it exits 2 (usage)
before anything is read or written. Reading a plaintext log needs no flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NoReturn, TypeAlias

from . import __version__
from ._fsio import open_file
from .codec import CompactionReport, ConversationCodec, Message
from .crypto import generate_key
from .errors import (
    BindingError,
    ConversationCodecError,
    CorruptRecordError,
    DecryptionError,
    FormatError,
    KeyMismatchError,
    KeyRequiredError,
    NotEncryptedError,
    UnsupportedVersionError,
)
from .keyfile import load_key
from .migrate import BatchItem, BatchReport, migrate_many
from .search import Hit, Query, searchable_text, to_us
from .store import ConversationStore
from .verify import VerifyReport, salvage

__all__ = ["main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CORRUPT = 0, 1, 2, 3
DEFAULT_KEY_ENV = "CONVERSATION_KEY"
_DEMO_FILE = "support-chat.log"
_AGE = re.compile(r"(\d+)([mhdw])")
_AGE_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# How search splits a query into terms (search.py's rule), to find the span to highlight.
_TERMS = re.compile(r'"([^"]*)"?|([^\s"]+)')
_BOLD, _RESET = "\x1b[1m", "\x1b[0m"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_KEY_SHAPED = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}=")  # a Fernet key
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'" + r'|"(?:[^"\\]|\\.)*"', re.DOTALL)  # a repr()


class _InputError(Exception):
    """Bad input the CLI itself detects (stdin, key source, files); exit 1."""


class _UsageError(Exception):
    """Arguments that parse but do not fit together (argparse cannot tell); exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse without abbreviations (``--password X`` must not mean ``--password-env X``)
    and without echoing any argument's value: it may be a secret typed in the wrong place."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            words = message[len(prefix) :].split()
            shown = [
                w.split("=")[0] + "=..." * ("=" in w) if w[:1] == "-" else "..." for w in words
            ]
            message = prefix + " ".join(shown) + " (values not shown)"
        else:
            # argparse quotes a value it echoes (invalid choice: 'X', invalid int value: 'X',
            # ignored explicit argument 'X'); our own type checks never echo one. The choices
            # listed at the end are ours, not the user's, so they stay.
            head, sep, choices = message.rpartition(" (choose from ")
            head, sep, choices = (head, sep, choices) if sep else (message, "", "")
            message = _QUOTED.sub("(value not shown)", head) + sep + choices
        super().error(message)


# -- keys, passwords, opening, output ---------------------------------------------------------


def _secret_env(var: str, what: str) -> str:
    """Return the value of the environment variable ``var``, which must hold ``what``."""
    value = os.environ.get(var)
    if value is None:
        raise _InputError(f"${var} is not set; it should hold the {what}")
    if not value.strip():
        raise _InputError(f"${var} is set but empty; it should hold the {what}")
    return value


def _key_file(path: str) -> str:
    # The library's rule: a private regular file holding exactly one key (never quoted).
    try:
        return load_key(path)
    except FormatError as exc:  # the key file's content: exit 1, not 3 (a damaged log)
        raise _InputError(str(exc)) from None


def _key(args: argparse.Namespace) -> str | None:
    """Return the key from --key-file or the --key-env variable; None means plaintext."""
    if getattr(args, "password_env", None) is not None or getattr(args, "plain", False):
        return None  # a password opens the log, or --plain: the key variable is not consulted
    if getattr(args, "key_file", None) is not None:
        return _key_file(args.key_file)
    env = getattr(args, "key_env", DEFAULT_KEY_ENV)
    value = os.environ.get(env)
    if value is None:
        return None
    if not value.strip():
        # Rejected rather than treated as unset: writing plaintext by accident is worse.
        raise _InputError(f"${env} is set but empty; unset it to use a plaintext log")
    return value.strip()


def _plaintext_needs_plain(args: argparse.Namespace, target: str) -> None:
    """Refuse to write ``target`` unencrypted unless ``--plain`` asks for it (exit 2).

    Checked before anything is read or written: an unset or misspelt key variable must
    not silently create, or keep writing, a plaintext log.
    """
    sources = (args.key_file, getattr(args, "password_env", None), os.environ.get(args.key_env))
    if args.plain or any(source is not None for source in sources):
        return
    options = ["--key-env VAR", "--key-file FILE"]
    options += ["--password-env VAR"] if hasattr(args, "password_env") else []
    raise _UsageError(
        f"no key: ${args.key_env} is not set. To write {target} encrypted, set it or use "
        f"{', '.join(options[:-1])} or {options[-1]}; to write UNENCRYPTED instead, pass --plain"
    )


def _password(args: argparse.Namespace) -> str | None:
    var = getattr(args, "password_env", None)
    return None if var is None else _secret_env(var, "password")


def _legacy(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """Return the (key, password) of an encrypted legacy source, from their variables."""
    key_var, password_var = args.legacy_key_env, args.legacy_password_env
    key = None if key_var is None else _secret_env(key_var, "legacy key").strip()
    password = None if password_var is None else _secret_env(password_var, "legacy password")
    return key, password


def _open(args: argparse.Namespace, *, must_exist: bool = True) -> ConversationCodec:
    if must_exist and not os.path.lexists(args.path):
        raise _InputError(f"{args.path}: no such log")
    durability = getattr(args, "durability", "fsync")
    return ConversationCodec(
        args.path,
        encryption_key=_key(args),
        durability=durability,
        password=_password(args),
        context=getattr(args, "context", None),
    )


def _ts(value: datetime | None) -> str | None:
    """Format a UTC time as the plaintext log does: 2026-11-21T05:02:53.123456Z."""
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _short(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _emit(value: object) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n")


def _fields(report: Any) -> dict[str, Any]:
    """Return a library dataclass as JSON-ready fields (new fields show up by themselves)."""
    return {f.name: _plain(getattr(report, f.name)) for f in dataclasses.fields(report)}


def _plain(value: object) -> object:
    if isinstance(value, datetime):
        return _ts(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _fields(value)
    return str(value) if isinstance(value, Path) else value


def _printable(text: str) -> str:
    """Escape control characters: stored text must not drive the terminal (ANSI escapes)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", text)


def _table(rows: Sequence[tuple[str, ...]], right: frozenset[int] = frozenset()) -> None:
    """Print rows (the first is the heading) as aligned columns."""
    rows = [tuple(_printable(cell) for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())


# -- commands --------------------------------------------------------------------------------


def _read_messages(text: str) -> list[Message]:
    """Parse stdin: one JSON object, a JSON array of objects, or JSON lines."""
    if not text.strip():
        raise _InputError("no message on stdin; pipe a JSON object, an array, or JSON lines")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as whole:
        value = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                value.append(json.loads(line))
            except json.JSONDecodeError as exc:
                # Failing on the first line means it was not JSON lines: report the document.
                where, err = ("stdin", whole) if not value else (f"stdin line {number}", exc)
                raise _InputError(f"{where} is not valid JSON: {err}") from None
    messages = [value] if isinstance(value, dict) else value
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise _InputError("stdin must hold messages (JSON objects): one, an array, or one a line")
    return messages


# -- commands --------------------------------------------------------------------------------


def _cmd_keygen(args: argparse.Namespace) -> int:
    key = generate_key()
    if args.out is None:
        print(key)  # the one place a key is printed: meant for a pipe into a secret store
        return EXIT_OK
    try:
        fd = open_file(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise _InputError(f"{args.out} already exists; refusing to overwrite a key") from None
    try:
        os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
        os.write(fd, (key + "\n").encode("ascii"))
        os.fsync(fd)  # a key lost to a power cut makes every log sealed with it unreadable
    except OSError:
        os.unlink(args.out)
        raise
    finally:
        os.close(fd)
    print(f"wrote a new key to {args.out} (mode 0600); use it with --key-file {args.out}")
    return EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    with _open(args) as codec:
        fields = _fields(codec.info())
    if args.json:
        _emit(fields)
    else:
        for name, value in fields.items():
            shown = ("yes" if value else "no") if isinstance(value, bool) else value
            print(f"{name.replace('_', ' ') + ':':<17} {'-' if shown is None else shown}")
    return EXIT_OK


def _cmd_cat(args: argparse.Namespace) -> int:
    with _open(args) as codec:
        for seq, message in enumerate(codec):  # streams: bounded memory on long logs
            if args.with_timestamps:
                _emit({"seq": seq, "ts": _ts(codec.timestamp(seq)), "message": message})
            else:
                _emit(message)
    return EXIT_OK


def _cmd_tail(args: argparse.Namespace) -> int:
    with _open(args) as codec:
        messages = codec.tail(args.n)
    for message in messages:
        _emit(message)
    return EXIT_OK


def _cmd_append(args: argparse.Namespace) -> int:
    _plaintext_needs_plain(args, args.path)
    messages = _read_messages(sys.stdin.read())
    with _open(args, must_exist=False) as codec:
        seqs = codec.extend(messages)
    for seq in seqs:
        print(seq)
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.dir is not None:
        os.makedirs(args.dir, exist_ok=True)
        _demo(os.path.join(args.dir, _DEMO_FILE), args.durability)
        print(f"Kept the files in {args.dir}; the key is gone, so the log cannot be read again.")
        return EXIT_OK
    folder = tempfile.mkdtemp(prefix="conversation-codec-demo-")
    try:
        _demo(os.path.join(folder, _DEMO_FILE), args.durability)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return EXIT_OK


# -- demo ------------------------------------------------------------------------------------


def _call(call_id: str, name: str, arguments: dict[str, Any]) -> Message:
    function = {"name": name, "arguments": json.dumps(arguments)}
    return {"id": call_id, "type": "function", "function": function}


_DEMO_TURN_1: list[Message] = [
    {"role": "system", "content": "You are Ava, support agent for Northwind Outfitters. "
     "Be brief; look orders up with tools before answering."},
    {"role": "user", "content": "Hi, order A1042 was due last Tuesday and still hasn't "
     "arrived. Can you check where it is?"},
    {"role": "assistant", "content": None,
     "tool_calls": [_call("call_1", "lookup_order", {"order_id": "A1042"})]},
    {"role": "tool", "tool_call_id": "call_1", "content": json.dumps(
        {"status": "in_transit", "carrier": "UPS", "last_scan": "Memphis, TN",
         "eta": "2025-11-24", "shipping_paid": "7.95"})},
    {"role": "assistant", "content": "It's with UPS, last scanned in Memphis, TN; the new "
     "delivery date is Monday, Nov 24. Sorry for the delay!"},
]  # fmt: skip
_DEMO_TURN_2: list[Message] = [
    {"role": "user", "content": "I needed it for the weekend. Can I get the shipping back?"},
    {"role": "assistant", "content": None, "tool_calls": [
        _call("call_2", "refund_shipping", {"order_id": "A1042", "amount": "7.95"})]},
    {"role": "tool", "tool_call_id": "call_2",
     "content": json.dumps({"refund_id": "R-88213", "amount": "7.95", "currency": "USD"})},
    {"role": "assistant", "content": "Done: $7.95 shipping refunded (ref R-88213); it shows "
     "on your card in 3-5 business days."},
    {"role": "user", "content": "Perfect, thanks Ava!"},
]  # fmt: skip


def _summary(message: Message, width: int = 62) -> str:
    calls = message.get("tool_calls") or []
    text = " ".join(
        [f"-> {c['function']['name']}({c['function']['arguments']})" for c in calls]
        + [str(message.get("content") or "")]
    ).strip()
    return text if len(text) <= width else text[: width - 3] + "..."


def _demo(path: str, durability: str) -> None:
    """Write, reopen and show one encrypted support conversation; ~20 lines of output."""
    if os.path.lexists(path):
        raise _InputError(f"{path} already exists; give --dir an empty folder")
    key = generate_key()  # in memory only: never printed, gone when the demo ends
    with ConversationCodec(path, encryption_key=key, durability=durability) as codec:
        messages = codec.load() or []  # the seed pattern: load, add a turn, save
        messages.extend(_DEMO_TURN_1)
        codec.save(messages)  # appends only what is new
        for message in _DEMO_TURN_2:  # or one record per message
            codec.append(message)
    print(f"Wrote an encrypted support chat to {path}")
    print("  turn 1 with load()/save(), turn 2 with append(); key held in memory only\n")
    with ConversationCodec(path, encryption_key=key) as codec:  # reopen, as a new process would
        tail, info = codec.tail(4), codec.info()
    print("Last 4 messages after reopening:")
    for message in tail:
        print(f"  {message['role']:<9}  {_summary(message)}")
    plain = len(json.dumps(_DEMO_TURN_1 + _DEMO_TURN_2).encode())
    on_disk = info.log_bytes + info.index_bytes
    print(f"\nInfo: {info.message_count} messages, format v{info.format_version}, encrypted")
    print(f"  first {_ts(info.first_timestamp)}, last {_ts(info.last_timestamp)}")
    print(
        f"  {plain} bytes of plaintext JSON -> {on_disk} bytes on disk "
        f"({info.log_bytes} log + {info.index_bytes} index)"
    )
    try:
        ConversationCodec(path, encryption_key=generate_key()).close()
    except DecryptionError:
        print("\nWrong key: refused with DecryptionError; nothing was decrypted.")
    else:
        raise _InputError("a wrong key opened the log; please report this bug")


# -- search ----------------------------------------------------------------------------------


def _cmd_search(args: argparse.Namespace) -> int:
    now = datetime.now(timezone.utc)
    options: dict[str, Any] = {
        "since": args.since if args.last is None else _ts(now - args.last),
        "until": args.until,
        "role": args.role,
        "limit": args.limit,
        "newest_first": args.newest_first,
        "regex": args.regex,
        "case_sensitive": args.case_sensitive,
    }
    bold = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    if os.path.isdir(args.path):
        if args.password_env is not None:
            raise _UsageError("a store root takes --key-env or --key-file, not --password-env")
        store = ConversationStore(args.path, encryption_key=_key(args))
        skipped: list[str] = []

        def skip(conversation_id: str, exc: ConversationCodecError) -> None:
            skipped.append(conversation_id)  # reported, and the search carries on
            print(f"error: {conversation_id}: {exc}", file=sys.stderr)

        for conversation_id, hit in store.search(args.query, on_error=skip, **options):
            _show_hit(args, hit, conversation_id, bold)
        return EXIT_ERROR if skipped else EXIT_OK
    with _open(args) as codec:
        for hit in codec.search(args.query, **options):
            _show_hit(args, hit, None, bold)
    return EXIT_OK


def _show_hit(args: argparse.Namespace, hit: Hit, conversation_id: str | None, bold: bool) -> None:
    if args.json:
        found = {} if conversation_id is None else {"conversation_id": conversation_id}
        _emit({**found, "seq": hit.seq, "timestamp": _ts(hit.timestamp), "message": hit.message})
        return
    where = f"#{hit.seq}" if conversation_id is None else f"{conversation_id} #{hit.seq}"
    where, role = _printable(where), _printable(str(hit.message.get("role", "-")))
    snippet = _snippet(hit.message, args.query, args.regex, args.case_sensitive, bold)
    print(f"{_short(hit.timestamp)}  {where}  {role:<9}  {snippet}")


def _snippet(message: Message, query: str | None, regex: bool, exact: bool, bold: bool) -> str:
    """Return ~80 characters of the message's searchable text around its first match."""
    text = _printable(" ".join(" ".join(part.split()) for part in searchable_text(message)))
    flags = 0 if exact else re.IGNORECASE
    spans = []
    if query and regex:  # the library's linear-time engine: Python's re could hang here
        spans = [s for s in [Query(query, regex=True, case_sensitive=exact).span(text)] if s]
    elif query:
        terms = [phrase or word for phrase, word in _TERMS.findall(query)]
        found = [re.search(re.escape(t), text, flags) for t in terms if t]
        spans = [m.span() for m in found if m]
    start, end = min(spans) if spans else (0, 0)
    lo = max(0, start - 30)
    hi = min(len(text), max(end, lo + 80))
    marked = f"{_BOLD}{text[start:end]}{_RESET}" if bold and end > start else text[start:end]
    return (
        ("..." if lo else "")
        + text[lo:start]
        + marked
        + text[end:hi]
        + ("..." if hi < len(text) else "")
    )


# -- verify and salvage ----------------------------------------------------------------------


def _cmd_verify(args: argparse.Namespace) -> int:
    worst = EXIT_OK
    for path in args.paths:
        one = argparse.Namespace(**{**vars(args), "path": path})
        try:
            with _open(one) as codec:
                report = codec.verify()
        except (ConversationCodecError, OSError, ValueError, _InputError) as exc:
            worst = max(worst, _report(exc, one))  # one unreadable log does not stop the rest
            continue
        if args.json:
            _emit(report.as_dict())
        else:
            _show_verify(report)
        if not report.ok:
            worst = max(worst, EXIT_CORRUPT)
    return worst


def _show_verify(report: VerifyReport) -> None:
    state = "ok" if report.ok else "DAMAGED"
    count = f"{report.records} intact record{'s' * (report.records != 1)}"
    found = f", {len(report.problems)} problem(s)" if report.problems else ""
    print(f"{report.path}: {state}, {count}{found}")
    for problem in report.problems:
        # index-* offsets are into the .idx file, the others into the log
        where = "index byte" if problem.kind.startswith("index-") else "byte"
        note = "" if problem.is_damage else " (no data lost)"
        print(f"  {where} {problem.offset}: {problem.kind}: {problem.detail}{note}")


def _cmd_salvage(args: argparse.Namespace) -> int:
    if not os.path.lexists(args.path):
        raise _InputError(f"{args.path}: no such log")
    _plaintext_needs_plain(args, args.dst)
    report = salvage(
        args.path,
        args.dst,
        encryption_key=_key(args),
        password=_password(args),
        context=args.context,
    )
    if args.json:
        _emit(_fields(report))
        return EXIT_OK
    print(f"recovered {report.recovered} messages into {report.destination}")
    lost = ", ".join(str(seq) for seq in report.lost_seqs[:50])
    more = f" and {len(report.lost_seqs) - 50} more" if len(report.lost_seqs) > 50 else ""
    print(f"lost seqs: {lost}{more}" if lost else "lost seqs: none")
    print(f"{report.source} was only read; check {report.destination}, then replace the log")
    return EXIT_OK


# -- compact, rekey, passwd ------------------------------------------------------------------


def _show_rewrite(args: argparse.Namespace, what: str, report: CompactionReport) -> int:
    if args.json:
        _emit({"path": args.path, **_fields(report)})
    else:
        print(
            f"{what} {args.path}: {report.messages} messages kept, "
            f"{report.bytes_before:,} -> {report.bytes_after:,} bytes"
        )
    return EXIT_OK


def _cmd_compact(args: argparse.Namespace) -> int:
    _plaintext_needs_plain(args, args.path)
    with _open(args) as codec:
        report = codec.compact()
    return _show_rewrite(args, "compacted", report)


def _cmd_rekey(args: argparse.Namespace) -> int:
    if args.new_key_file is not None:
        new_key = _key_file(args.new_key_file)
    else:
        new_key = _secret_env(args.new_key_env, "new key").strip()
    with _open(args) as codec:
        report = codec.rotate_key(new_key)
    _show_rewrite(args, "re-encrypted", report)
    if not args.json:
        print("only the new key opens it now; keep the old key until backups are re-keyed")
    return EXIT_OK


def _cmd_passwd(args: argparse.Namespace) -> int:
    old = _secret_env(args.password_env, "current password")
    new = _secret_env(args.new_password_env, "new password")
    with _open(args) as codec:
        report = codec.change_password(old, new)
    return _show_rewrite(args, "changed the password of", report)


# -- migrate, ls, export, import -------------------------------------------------------------


def _cmd_migrate(args: argparse.Namespace) -> int:
    if not args.dry_run:  # a dry run writes nothing, and says whether it would be plaintext
        _plaintext_needs_plain(args, "the new logs")
    key = _key(args)
    legacy_key, legacy_password = _legacy(args)
    report = migrate_many(
        args.paths,
        out_dir=args.out,
        encryption_key=key,
        legacy_key=legacy_key,
        password=legacy_password,
        backup=not args.no_backup,
        dry_run=args.dry_run,
        progress=_progress if sys.stderr.isatty() else None,
    )
    if args.json:
        _emit({**report.as_dict(), "encrypted": key is not None})
    else:
        _show_batch(args, report, key is not None)
    return EXIT_OK if report.ok else EXIT_ERROR


def _progress(done: int, total: int, item: BatchItem) -> None:
    filled = 30 * done // max(total, 1)
    name = str(item.path)[-40:]
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{total} {name:<40}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _show_batch(args: argparse.Namespace, report: BatchReport, encrypted: bool) -> None:
    rows = [("STATUS", "FILE", "DETAILS")]
    for item in report.items:
        notes = [] if item.report is None else [n for n in item.report.notes if n != item.reason]
        rows.append((item.status, str(item.path), "; ".join([item.reason, *notes])))
    if report.items:
        _table(rows)
    dry = " (dry run: nothing was written)" if report.dry_run else ""
    counts = [f"{len(report.converted)} converted", f"{len(report.skipped)} skipped"]
    print(", ".join([*counts, f"{len(report.failed)} failed"]) + dry)
    source = f"--key-file {args.key_file}" if args.key_file else f"${args.key_env}"
    if encrypted:
        print(f"new logs are encrypted with the key from {source}")
    else:
        how = "--plain" if args.plain else f"no key in {source}; a real run needs --plain"
        print(f"new logs are PLAINTEXT ({how})")


def _cmd_ls(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.path):
        raise _InputError(f"{args.path}: no such directory")
    found = ConversationStore(args.path, encryption_key=_key(args)).list()
    failed = any(c.status != "ok" for c in found)  # listed with their status; exit 1
    if args.json:
        for info in found:
            _emit(_fields(info))
        return EXIT_ERROR if failed else EXIT_OK
    rows = [("ID", "MESSAGES", "FIRST", "LAST", "BYTES", *(("STATUS",) if failed else ()))]
    for c in found:
        first, last = _short(c.first_timestamp), _short(c.last_timestamp)
        count = str(c.message_count) if c.status == "ok" else "-"
        row = (c.conversation_id, count, first, last, f"{c.disk_bytes:,}")
        rows.append((*row, c.status) if failed else row)
    _table(rows, right=frozenset({1, 4}))
    return EXIT_ERROR if failed else EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    with _open(args) as codec:
        count = codec.export(args.out, format=args.format, with_timestamps=not args.no_timestamps)
    print(
        f"warning: {args.out} is UNENCRYPTED: it holds {count} messages in plaintext "
        "(mode 0600); protect it, and delete it when done",
        file=sys.stderr,
    )
    print(f"exported {count} messages to {args.out} ({args.format})")
    return EXIT_OK


def _cmd_import(args: argparse.Namespace) -> int:
    _plaintext_needs_plain(args, args.path)
    legacy_key, legacy_password = _legacy(args)
    with _open(args, must_exist=False) as codec:
        args.reading = args.src  # from here, key errors concern SRC (see _report)
        report = codec.import_(
            args.src,
            merge=args.merge,
            replace=args.replace,
            legacy_key=legacy_key,
            password=legacy_password,
        )
    if args.json:
        _emit(_fields(report))
        return EXIT_OK
    how = "merged into" if args.merge else "added to"
    how = "replaced the history of" if args.replace else how
    print(
        f"read {report.read} messages ({report.format.value}) from {args.src}; {how} "
        f"{args.path}: {report.added} added, {report.skipped_duplicate} duplicates skipped, "
        f"{report.rejected} rejected"
    )
    return EXIT_OK


# -- errors and parsing ----------------------------------------------------------------------


def _report(exc: Exception, args: argparse.Namespace) -> int:
    """Print one ``error:`` line for ``exc`` and return the exit code (the only mapping)."""
    path = getattr(args, "path", None)
    reading = getattr(args, "reading", None)  # import: the source file being read
    password = getattr(args, "password_env", None)
    source = f"--key-file {args.key_file}" if getattr(args, "key_file", None) else None
    env = getattr(args, "key_env", DEFAULT_KEY_ENV)
    source = source or (f"--password-env {password}" if password else f"${env}")
    code = EXIT_ERROR
    if isinstance(exc, _UsageError):
        code, message = EXIT_USAGE, str(exc)
    elif reading is not None and isinstance(exc, (KeyMismatchError, DecryptionError)):
        message = f"{exc} (use --legacy-key-env VAR or --legacy-password-env VAR)"
    elif isinstance(exc, KeyRequiredError) and password:
        message = f"{path} is encrypted with a key, not a password; use --key-env or --key-file"
    elif isinstance(exc, KeyRequiredError) and "password" in str(exc):
        message = f"{path} is protected by a password; name its variable with --password-env VAR"
    elif isinstance(exc, KeyRequiredError):
        message = (
            f"{path} is encrypted and no key was given; put the key in ${env}, "
            "name another variable with --key-env VAR, or use --key-file FILE "
            "(--password-env VAR for a password-protected log)"
        )
    elif isinstance(exc, NotEncryptedError):
        given = "a password" if password else "a key"
        message = f"{path} is a plaintext log but {given} was given ({source}); drop it"
    elif isinstance(exc, BindingError):
        message = f"{exc} (a store's log: pass --context with its conversation id)"
    elif isinstance(exc, DecryptionError):
        secret = "password" if password else "key"
        message = f"cannot decrypt {path}: wrong {secret} ({source}), or the header was modified"
    elif isinstance(exc, UnsupportedVersionError):
        message = str(exc)  # newer, not damaged: exit 1 and the library's "upgrade" hint
    elif isinstance(exc, FormatError):
        code = EXIT_CORRUPT
        damaged = isinstance(exc, CorruptRecordError)
        message = f"log is damaged: {exc}" if damaged else str(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        message = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        message = str(exc) or type(exc).__name__
    # A key given where a path belongs ("tail $KEY") must not come back on the terminal.
    message = _KEY_SHAPED.sub("(a key-shaped value, not shown)", message)
    print(f"error: {message}", file=sys.stderr)
    return code


def _parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="conversation-codec",
        description="Inspect and write append-only (optionally encrypted) conversation logs.",
        epilog="Example:\n  conversation-codec demo\n"
        "  CONVERSATION_KEY=$(cat chat.key) conversation-codec tail chat.log -n 3",
        formatter_class=raw,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_commands(sub)
    return parser


_Sub: TypeAlias = "argparse._SubParsersAction[_Parser]"


def _command(
    sub: _Sub,
    name: str,
    run: Callable[[argparse.Namespace], int],
    summary: str,
    example: str,
    parents: Sequence[_Parser] = (),
) -> argparse.ArgumentParser:
    cmd: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=summary,
        parents=list(parents),
        epilog=f"Example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.set_defaults(run=run)
    return cmd


def _secrets(*, password: bool) -> _Parser:
    """A parent parser for where a log's key (or, with ``password``, its password) comes from."""
    keys = _Parser(add_help=False)
    group = keys.add_argument_group("keys (never taken from the command line)")
    source = group.add_mutually_exclusive_group()
    source.add_argument(
        "--key-env",
        type=_env_name,
        metavar="VAR",
        default=DEFAULT_KEY_ENV,
        help="environment variable holding the key (default: %(default)s)",
    )
    source.add_argument(
        "--key-file", metavar="FILE", help="read the key from FILE (mode 0600: others no access)"
    )
    source.add_argument(
        "--plain",
        action="store_true",
        help="no key: the log is plaintext; required to create or write one",
    )
    if password:
        source.add_argument(
            "--password-env",
            type=_env_name,
            metavar="VAR",
            help="environment variable holding the password of a password-protected log",
        )
    return keys


def _binding() -> _Parser:
    """A parent parser for the context a log is bound to (FORMAT.md §4.2)."""
    bound = _Parser(add_help=False)
    bound.add_argument(
        "--context",
        metavar="ID",
        help="the conversation id the log is bound to (a ConversationStore log: its id)",
    )
    return bound


def _add_commands(sub: _Sub) -> None:
    log = _Parser(add_help=False, parents=[_secrets(password=True), _binding()])
    log.add_argument("path", metavar="PATH", help="the conversation log file")
    durable = _Parser(add_help=False)
    durable.add_argument(
        "--durability",
        choices=("fsync", "flush"),
        default="fsync",
        help="fsync: survives power loss (default); flush: a crash only",
    )
    as_json = _Parser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON (lines) for scripts")
    _add_basic_commands(sub, log, durable)
    _add_search(sub, as_json)
    _add_repair_commands(sub, log, as_json)
    _add_transfer_commands(sub, log, as_json)


def _add_basic_commands(sub: _Sub, log: _Parser, durable: _Parser) -> None:
    keygen = _command(
        sub,
        "keygen",
        _cmd_keygen,
        "print a new encryption key (or write it to a file)",
        "conversation-codec keygen --out chat.key",
    )
    keygen.add_argument("--out", metavar="FILE", help="write the key to a new 0600 file instead")
    demo = _command(
        sub,
        "demo",
        _cmd_demo,
        "write, reopen and show an encrypted sample conversation",
        "conversation-codec demo --dir /tmp/codec-demo",
        [durable],
    )
    demo.add_argument("--dir", metavar="DIR", help="keep the log in DIR (default: a temp dir)")
    info = _command(
        sub,
        "info",
        _cmd_info,
        "show header and index facts (count, sizes, times)",
        "conversation-codec info chat.log --json",
        [log],
    )
    info.add_argument("--json", action="store_true", help="print one JSON object")
    cat = _command(
        sub,
        "cat",
        _cmd_cat,
        "print every message as JSON lines",
        "conversation-codec cat chat.log --with-timestamps | jq .ts",
        [log],
    )
    cat.add_argument(
        "--with-timestamps", action="store_true", help='print {"seq", "ts", "message"} objects'
    )
    tail = _command(
        sub,
        "tail",
        _cmd_tail,
        "print the last N messages as JSON lines",
        "conversation-codec tail chat.log -n 3",
        [log],
    )
    tail.add_argument("-n", type=_count, default=10, metavar="N", help="default: %(default)s")
    tail.add_argument("--json", action="store_true", help="JSON lines (the default output)")
    _command(
        sub,
        "append",
        _cmd_append,
        "append messages read from stdin; print their seqs",
        """echo '{"role": "user", "content": "hi"}' | conversation-codec append chat.log""",
        [log, durable],
    )


def _add_search(sub: _Sub, as_json: _Parser) -> None:
    search = _command(
        sub,
        "search",
        _cmd_search,
        "find messages by words, time and role in a log or across a store root",
        'conversation-codec search chat.log "refund order" --last 7d --role user\n'
        "  conversation-codec search conversations/ refund --since 2026-10-01 --json",
        [_secrets(password=True), as_json],
    )
    search.add_argument("path", metavar="PATH", help="a log file, or a store root directory")
    search.add_argument(
        "query",
        metavar="QUERY",
        nargs="?",
        help='words that must all appear (any case); "a phrase" in quotes; omit to match all',
    )
    when = search.add_argument_group("time (UTC; since inclusive, until exclusive)")
    start = when.add_mutually_exclusive_group()
    start.add_argument("--since", type=_when, metavar="TIME", help="e.g. 2026-10-01T12:00Z")
    start.add_argument("--last", type=_age, metavar="AGE", help="since AGE ago: 30m, 12h, 7d, 2w")
    when.add_argument("--until", type=_when, metavar="TIME", help="e.g. 2026-10-02")
    search.add_argument("--role", action="append", help="only this role (repeatable)")
    search.add_argument("--limit", type=_count, metavar="N", help="stop after N hits")
    search.add_argument("--newest-first", action="store_true", help="newest hits first")
    search.add_argument(
        "--regex",
        action="store_true",
        help="QUERY is a regular expression, run by RE2 in linear time "
        '(pip install "conversation-codec[regex]"); no backreferences or lookaround',
    )
    search.add_argument("--case-sensitive", action="store_true", help="match case exactly")


def _add_repair_commands(sub: _Sub, log: _Parser, as_json: _Parser) -> None:
    verify = _command(
        sub,
        "verify",
        _cmd_verify,
        "check every record of one or more logs; exit 3 when any is damaged",
        "conversation-codec verify chats/*.log",
        [_secrets(password=True), _binding(), as_json],
    )
    verify.add_argument("paths", metavar="PATH", nargs="+", help="log files")
    salvage_cmd = _command(
        sub,
        "salvage",
        _cmd_salvage,
        "copy the intact records of a damaged log into a new log (SRC is only read)",
        "conversation-codec salvage chat.log rescued.log",
        [log, as_json],
    )
    salvage_cmd.add_argument("dst", metavar="DST", help="the new log (must not exist)")
    _command(
        sub,
        "compact",
        _cmd_compact,
        "rewrite a log: re-seal, re-compress, rebuild the index",
        "conversation-codec compact chat.log",
        [log, as_json],
    )
    rekey = _command(
        sub,
        "rekey",
        _cmd_rekey,
        "re-encrypt a log under a new key (the old key comes from --key-env/--key-file)",
        "CONVERSATION_KEY=$(cat old.key) NEW_KEY=$(cat new.key) "
        "conversation-codec rekey chat.log --new-key-env NEW_KEY",
        [log, as_json],
    )
    new = rekey.add_argument_group("the new key (never taken from the command line)")
    new_source = new.add_mutually_exclusive_group(required=True)
    new_source.add_argument(
        "--new-key-env", type=_env_name, metavar="VAR", help="variable holding the new key"
    )
    new_source.add_argument("--new-key-file", metavar="FILE", help="read the new key from FILE")
    passwd = _command(
        sub,
        "passwd",
        _cmd_passwd,
        "change the password of a password-protected log",
        "OLD_PW=... NEW_PW=... conversation-codec passwd chat.log "
        "--password-env OLD_PW --new-password-env NEW_PW",
        [as_json],
    )
    passwd.add_argument("path", metavar="PATH", help="the conversation log file")
    pws = passwd.add_argument_group("passwords (never taken from the command line)")
    pws.add_argument(
        "--password-env", type=_env_name, metavar="VAR", required=True, help="the current one"
    )
    pws.add_argument(
        "--new-password-env", type=_env_name, metavar="VAR", required=True, help="the new one"
    )


def _legacy_secrets() -> _Parser:
    legacy = _Parser(add_help=False)
    group = legacy.add_argument_group("an encrypted legacy source (never from the command line)")
    group.add_argument(
        "--legacy-key-env", type=_env_name, metavar="VAR", help="variable holding its Fernet key"
    )
    return legacy


def _add_transfer_commands(sub: _Sub, log: _Parser, as_json: _Parser) -> None:
    migrate = _command(
        sub,
        "migrate",
        _cmd_migrate,
        "convert legacy histories (files, or directories recursively) into logs; "
        "the new logs' key comes from --key-env/--key-file (none: plaintext)",
        "CONVERSATION_KEY=$(cat chat.key) conversation-codec migrate histories/ --out logs/",
        [_secrets(password=False), _legacy_secrets(), as_json],
    )
    migrate.add_argument("paths", metavar="PATH", nargs="+", help="files or directories")
    migrate.add_argument(
        "--password-env",
        "--legacy-password-env",
        dest="legacy_password_env",
        type=_env_name,
        metavar="VAR",
        help="variable holding the legacy password (its .salt file beside each source)",
    )
    migrate.add_argument("--out", metavar="DIR", help="write logs under DIR; sources untouched")
    migrate.add_argument("--no-backup", action="store_true", help="in place: keep no .bak copy")
    migrate.add_argument("--dry-run", action="store_true", help="read and check; write nothing")
    ls = _command(
        sub,
        "ls",
        _cmd_ls,
        "list the conversations of a store root (id, messages, first, last, bytes)",
        "conversation-codec ls conversations/ --json",
        [_secrets(password=False), as_json],
    )
    ls.add_argument("path", metavar="ROOT", help="the store's root directory")
    export = _command(
        sub,
        "export",
        _cmd_export,
        "write the history to an UNENCRYPTED JSONL or JSON file (mode 0600)",
        "conversation-codec export chat.log --out chat.jsonl  # plaintext: protect it",
        [log],
    )
    export.add_argument("--out", metavar="FILE", required=True, help="the UNENCRYPTED output")
    export.add_argument("--format", choices=("jsonl", "json"), default="jsonl")
    export.add_argument("--no-timestamps", action="store_true", help='omit "timestamp" keys')
    import_cmd = _command(
        sub,
        "import",
        _cmd_import,
        "read a history file (legacy, export or log) into a log, keeping the messages "
        "already there (in time order); only --replace discards them",
        "conversation-codec import chat.log old-history.jsonl --merge",
        [log, _legacy_secrets(), as_json],
    )
    import_cmd.add_argument("src", metavar="SRC", help="the history file to read")
    how = import_cmd.add_mutually_exclusive_group()
    how.add_argument("--merge", action="store_true", help="add only messages not present")
    how.add_argument(
        "--replace", action="store_true", help="DISCARD the log's history, keep SRC's only"
    )
    import_cmd.add_argument(
        "--legacy-password-env",
        type=_env_name,
        metavar="VAR",
        help="variable holding SRC's legacy password",
    )


def _env_name(text: str) -> str:
    if not _ENV_NAME.fullmatch(text):  # never echo it: it may be the secret itself
        raise argparse.ArgumentTypeError("expects the NAME of an environment variable")
    return text


def _count(text: str) -> int:
    if not text.isdigit():  # never echo it: it may be a secret typed in the wrong place
        raise argparse.ArgumentTypeError("expected a whole number >= 0")
    return int(text)


def _when(text: str) -> str:
    try:
        to_us(text, "time")  # the library's parser decides what a time is
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected an ISO-8601 time such as 2026-10-01 or 2026-10-01T12:00Z"
        ) from None
    return text


def _age(text: str) -> timedelta:
    match = _AGE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError("expected an age such as 30m, 12h, 7d or 2w")
    return timedelta(**{_AGE_UNITS[match[2]]: int(match[1])})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (the console script exits with it)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        code = run(args)
        sys.stdout.flush()
    except BrokenPipeError:  # `cat | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except (ConversationCodecError, OSError, ValueError, _InputError, _UsageError) as exc:
        return _report(exc, args)
    except KeyboardInterrupt:
        return 130
    return code
