"""The ``conversation-codec`` command: a thin layer over :class:`ConversationCodec`.

Each command opens the codec, calls one library method and prints the result. Library
errors become one ``error: ...`` line in :func:`_report`, the only place that picks exit
codes: 0 ok, 1 library or input error, 2 usage, 3 corruption found.

Keys come from an environment variable (``--key-env``, default ``CONVERSATION_KEY``) or a
file (``--key-file``), never from argv, and are never printed. ``keygen`` is the exception
on purpose: it prints a new key so it can be piped into a secret store.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from . import __version__
from .codec import ConversationCodec, LogInfo, Message
from .crypto import generate_key
from .errors import (
    ConversationCodecError,
    CorruptRecordError,
    DecryptionError,
    FormatError,
    KeyRequiredError,
    NotEncryptedError,
    UnsupportedVersionError,
)

__all__ = ["main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CORRUPT = 0, 1, 2, 3
DEFAULT_KEY_ENV = "CONVERSATION_KEY"
_DEMO_FILE = "support-chat.log"


class _InputError(Exception):
    """Bad input the CLI itself detects (stdin, key source, files); exit 1."""


# -- keys, opening, output -------------------------------------------------------------------


def _key(args: argparse.Namespace) -> str | None:
    """Return the key from --key-file or the --key-env variable; None means plaintext."""
    if args.key_file is not None:
        # Decode leniently: a decode error message would echo a byte of the secret.
        try:
            key = Path(args.key_file).read_bytes().decode("utf-8", "replace").strip()
        except OSError as exc:
            raise _InputError(f"cannot read key file {args.key_file}: {exc.strerror}") from None
        if not key:
            raise _InputError(f"key file {args.key_file} is empty")
        return key
    value = os.environ.get(args.key_env)
    if value is None:
        return None
    if not value.strip():
        # Rejected rather than treated as unset: writing plaintext by accident is worse.
        raise _InputError(f"${args.key_env} is set but empty; unset it to use a plaintext log")
    return value.strip()


def _open(args: argparse.Namespace, *, must_exist: bool = True) -> ConversationCodec:
    if must_exist and not os.path.lexists(args.path):
        raise _InputError(f"{args.path}: no such log")
    durability = getattr(args, "durability", "fsync")
    return ConversationCodec(args.path, encryption_key=_key(args), durability=durability)


def _ts(value: datetime | None) -> str | None:
    """Format a UTC time as the plaintext log does: 2026-11-21T05:02:53.123456Z."""
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _emit(value: object) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n")


def _info_fields(info: LogInfo) -> dict[str, Any]:
    """Return LogInfo as JSON-ready fields (new LogInfo fields show up by themselves)."""
    return {f.name: _plain(getattr(info, f.name)) for f in dataclasses.fields(info)}


def _plain(value: object) -> object:
    if isinstance(value, datetime):
        return _ts(value)
    return str(value) if isinstance(value, Path) else value


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
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
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
        fields = _info_fields(codec.info())
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


# -- errors and parsing ----------------------------------------------------------------------


def _report(exc: Exception, args: argparse.Namespace) -> int:
    """Print one ``error:`` line for ``exc`` and return the exit code (the only mapping)."""
    path = getattr(args, "path", None)
    source = f"--key-file {args.key_file}" if getattr(args, "key_file", None) else None
    env = getattr(args, "key_env", DEFAULT_KEY_ENV)
    source = source or f"${env}"
    code = EXIT_ERROR
    if isinstance(exc, KeyRequiredError):
        message = (
            f"{path} is encrypted and no key was given; put the key in ${env}, "
            "name another variable with --key-env VAR, or use --key-file FILE"
        )
    elif isinstance(exc, NotEncryptedError):
        message = f"{path} is a plaintext log but a key was given ({source}); drop the key"
    elif isinstance(exc, DecryptionError):
        message = f"cannot decrypt {path}: wrong key ({source}), or the header was modified"
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
    print(f"error: {message}", file=sys.stderr)
    return code


def _parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
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


def _add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    keys = argparse.ArgumentParser(add_help=False)
    key_group = keys.add_argument_group("keys (never taken from the command line)")
    source = key_group.add_mutually_exclusive_group()
    source.add_argument(
        "--key-env",
        metavar="VAR",
        default=DEFAULT_KEY_ENV,
        help="environment variable holding the key (default: %(default)s); "
        "when unset, the log is plaintext",
    )
    source.add_argument("--key-file", metavar="FILE", help="read the key from FILE")
    log = argparse.ArgumentParser(add_help=False, parents=[keys])
    log.add_argument("path", metavar="PATH", help="the conversation log file")
    durable = argparse.ArgumentParser(add_help=False)
    durable.add_argument(
        "--durability",
        choices=("fsync", "flush"),
        default="fsync",
        help="fsync: survives power loss (default); flush: a crash only",
    )

    def command(
        name: str,
        run: Callable[[argparse.Namespace], int],
        summary: str,
        example: str,
        parents: Sequence[argparse.ArgumentParser] = (),
    ) -> argparse.ArgumentParser:
        cmd = sub.add_parser(
            name,
            help=summary,
            description=summary,
            parents=list(parents),
            epilog=f"Example:\n  {example}",
            formatter_class=raw,
        )
        cmd.set_defaults(run=run)
        return cmd

    keygen = command(
        "keygen",
        _cmd_keygen,
        "print a new encryption key (or write it to a file)",
        "conversation-codec keygen --out chat.key",
    )
    keygen.add_argument("--out", metavar="FILE", help="write the key to a new 0600 file instead")
    demo = command(
        "demo",
        _cmd_demo,
        "write, reopen and show an encrypted sample conversation",
        "conversation-codec demo --dir /tmp/codec-demo",
        [durable],
    )
    demo.add_argument("--dir", metavar="DIR", help="keep the log in DIR (default: a temp dir)")
    info = command(
        "info",
        _cmd_info,
        "show header and index facts (count, sizes, times)",
        "conversation-codec info chat.log --json",
        [log],
    )
    info.add_argument("--json", action="store_true", help="print one JSON object")
    cat = command(
        "cat",
        _cmd_cat,
        "print every message as JSON lines",
        "conversation-codec cat chat.log --with-timestamps | jq .ts",
        [log],
    )
    cat.add_argument(
        "--with-timestamps", action="store_true", help='print {"seq", "ts", "message"} objects'
    )
    tail = command(
        "tail",
        _cmd_tail,
        "print the last N messages as JSON lines",
        "conversation-codec tail chat.log -n 3",
        [log],
    )
    tail.add_argument("-n", type=_count, default=10, metavar="N", help="default: %(default)s")
    tail.add_argument("--json", action="store_true", help="JSON lines (the default output)")
    command(
        "append",
        _cmd_append,
        "append messages read from stdin; print their seqs",
        """echo '{"role": "user", "content": "hi"}' | conversation-codec append chat.log""",
        [log, durable],
    )


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, not {text!r}")
    return int(text)


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
    except (ConversationCodecError, OSError, ValueError, _InputError) as exc:
        return _report(exc, args)
    except KeyboardInterrupt:
        return 130
    return code
