"""The commands on one log: ``info``, ``cat``, ``tail``, ``append``, ``export``, ``import``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from ._args import Parser, Sub, command, env_var_name, legacy_secrets, whole_number
from ._common import (
    EXIT_OK,
    InputError,
    emit,
    fields,
    legacy_source,
    open_log,
    plaintext_needs_plain,
    ts,
)

if TYPE_CHECKING:
    from ..codec import Message


def add_read_commands(sub: Sub, log: Parser, durable: Parser) -> None:
    """Add ``info``, ``cat``, ``tail`` and ``append`` to ``sub``."""
    info = command(
        sub,
        "info",
        _cmd_info,
        "show header and index facts (count, sizes, times)",
        "conversation-codec info chat.log --json",
        [log],
    )
    info.add_argument("--json", action="store_true", help="print one JSON object")
    cat = command(
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
    tail = command(
        sub,
        "tail",
        _cmd_tail,
        "print the last N messages as JSON lines",
        "conversation-codec tail chat.log -n 3",
        [log],
    )
    tail.add_argument("-n", type=whole_number, default=10, metavar="N", help="default: %(default)s")
    tail.add_argument("--json", action="store_true", help="JSON lines (the default output)")
    command(
        sub,
        "append",
        _cmd_append,
        "append messages read from stdin; print their seqs",
        """echo '{"role": "user", "content": "hi"}' | conversation-codec append chat.log""",
        [log, durable],
    )


def add_transfer_commands(sub: Sub, log: Parser, as_json: Parser) -> None:
    """Add ``export`` and ``import`` to ``sub``."""
    export = command(
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
    import_cmd = command(
        sub,
        "import",
        _cmd_import,
        "read a history file (legacy, export or log) into a log, keeping the messages "
        "already there (in time order); only --replace discards them",
        "conversation-codec import chat.log old-history.jsonl --merge",
        [log, legacy_secrets(), as_json],
    )
    import_cmd.add_argument("src", metavar="SRC", help="the history file to read")
    how = import_cmd.add_mutually_exclusive_group()
    how.add_argument("--merge", action="store_true", help="add only messages not present")
    how.add_argument(
        "--replace", action="store_true", help="DISCARD the log's history, keep SRC's only"
    )
    import_cmd.add_argument(
        "--legacy-password-env",
        type=env_var_name,
        metavar="VAR",
        help="variable holding SRC's legacy password",
    )


def _read_messages(text: str) -> list[Message]:
    """Parse stdin: one JSON object, a JSON array of objects, or JSON lines."""
    if not text.strip():
        raise InputError("no message on stdin; pipe a JSON object, an array, or JSON lines")
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
                raise InputError(f"{where} is not valid JSON: {err}") from None
    messages = [value] if isinstance(value, dict) else value
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InputError("stdin must hold messages (JSON objects): one, an array, or one a line")
    return messages


def _cmd_info(args: argparse.Namespace) -> int:
    with open_log(args) as codec:
        facts = fields(codec.info())
    if args.json:
        emit(facts)
    else:
        for name, value in facts.items():
            shown = ("yes" if value else "no") if isinstance(value, bool) else value
            print(f"{name.replace('_', ' ') + ':':<17} {'-' if shown is None else shown}")
    return EXIT_OK


def _cmd_cat(args: argparse.Namespace) -> int:
    with open_log(args) as codec:
        for seq, message in enumerate(codec):  # streams: bounded memory on long logs
            if args.with_timestamps:
                emit({"seq": seq, "ts": ts(codec.timestamp(seq)), "message": message})
            else:
                emit(message)
    return EXIT_OK


def _cmd_tail(args: argparse.Namespace) -> int:
    with open_log(args) as codec:
        messages = codec.tail(args.n)
    for message in messages:
        emit(message)
    return EXIT_OK


def _cmd_append(args: argparse.Namespace) -> int:
    plaintext_needs_plain(args, args.path)
    messages = _read_messages(sys.stdin.read())
    with open_log(args, must_exist=False) as codec:
        seqs = codec.extend(messages)
    for seq in seqs:
        print(seq)
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    with open_log(args) as codec:
        count = codec.export(args.out, format=args.format, with_timestamps=not args.no_timestamps)
    print(
        f"warning: {args.out} is UNENCRYPTED: it holds {count} messages in plaintext "
        "(mode 0600); protect it, and delete it when done",
        file=sys.stderr,
    )
    print(f"exported {count} messages to {args.out} ({args.format})")
    return EXIT_OK


def _cmd_import(args: argparse.Namespace) -> int:
    plaintext_needs_plain(args, args.path)
    legacy_key, legacy_password = legacy_source(args)
    with open_log(args, must_exist=False) as codec:
        args.reading = args.src  # from here, key errors concern SRC (see _report)
        report = codec.import_(
            args.src,
            merge=args.merge,
            replace=args.replace,
            legacy_key=legacy_key,
            password=legacy_password,
        )
    if args.json:
        emit(fields(report))
        return EXIT_OK
    how = "merged into" if args.merge else "added to"
    how = "replaced the history of" if args.replace else how
    print(
        f"read {report.read} messages ({report.format.value}) from {args.src}; {how} "
        f"{args.path}: {report.added} added, {report.skipped_duplicate} duplicates skipped, "
        f"{report.rejected} rejected"
    )
    return EXIT_OK
