"""The commands on one log: ``info``, ``cat``, ``tail``, ``append``, ``export``, ``import``."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from ._args import (
    ENV_NAME,
    WHOLE_NUMBER,
    as_json,
    choice,
    command,
    durability,
    legacy_secrets,
    log_options,
)
from ._common import (
    EXIT_OK,
    Args,
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


@command(
    "info",
    "show header and index facts (count, sizes, times)",
    "conversation-codec info chat.log --json",
)
@log_options
@as_json("print one JSON object")
def _info(args: Args) -> int:
    with open_log(args) as codec:
        facts = fields(codec.info())
    if args.json:
        emit(facts)
    else:
        for name, value in facts.items():
            shown = ("yes" if value else "no") if isinstance(value, bool) else value
            print(f"{name.replace('_', ' ') + ':':<17} {'-' if shown is None else shown}")
    return EXIT_OK


@command(
    "cat",
    "print every message as JSON lines",
    "conversation-codec cat chat.log --with-timestamps | jq .ts",
)
@log_options
@click.option("--with-timestamps", is_flag=True, help='print {"seq", "ts", "message"} objects')
def _cat(args: Args) -> int:
    with open_log(args) as codec:
        for seq, message in enumerate(codec):  # streams: bounded memory on long logs
            if args.with_timestamps:
                emit({"seq": seq, "ts": ts(codec.timestamp(seq)), "message": message})
            else:
                emit(message)
    return EXIT_OK


@command("tail", "print the last N messages as JSON lines", "conversation-codec tail chat.log -n 3")
@log_options
@click.option("-n", type=WHOLE_NUMBER, default=10, metavar="N", show_default=True)
@as_json("JSON lines (the default output)")
def _tail(args: Args) -> int:
    with open_log(args) as codec:
        messages = codec.tail(args.n)
    for message in messages:
        emit(message)
    return EXIT_OK


@command(
    "append",
    "append messages read from stdin; print their seqs",
    """echo '{"role": "user", "content": "hi"}' | conversation-codec append chat.log""",
)
@log_options
@durability()
def _append(args: Args) -> int:
    plaintext_needs_plain(args, args.path)
    messages = _read_messages(sys.stdin.read())
    with open_log(args, must_exist=False) as codec:
        seqs = codec.extend(messages)
    for seq in seqs:
        print(seq)
    return EXIT_OK


@command(
    "export",
    "write the history to an UNENCRYPTED JSONL or JSON file (mode 0600)",
    "conversation-codec export chat.log --out chat.jsonl  # plaintext: protect it",
)
@log_options
@click.option("--out", metavar="FILE", required=True, help="the UNENCRYPTED output")
@click.option("--format", type=choice("jsonl", "json"), default="jsonl", metavar="[jsonl|json]")
@click.option("--no-timestamps", is_flag=True, help='omit "timestamp" keys')
def _export(args: Args) -> int:
    with open_log(args) as codec:
        count = codec.export(args.out, format=args.format, with_timestamps=not args.no_timestamps)
    print(
        f"warning: {args.out} is UNENCRYPTED: it holds {count} messages in plaintext "
        "(mode 0600); protect it, and delete it when done",
        file=sys.stderr,
    )
    print(f"exported {count} messages to {args.out} ({args.format})")
    return EXIT_OK


@command(
    "import",
    "read a history file (legacy, export or log) into a log, keeping the messages "
    "already there (in time order); only --replace discards them",
    "conversation-codec import chat.log old-history.jsonl --merge",
)
@log_options
@click.argument("src", metavar="SRC")
@legacy_secrets()
@click.option(
    "--legacy-password-env",
    type=ENV_NAME,
    metavar="VAR",
    help="variable holding SRC's legacy password",
)
@click.option("--merge", is_flag=True, help="add only messages not present")
@click.option("--replace", is_flag=True, help="DISCARD the log's history, keep SRC's only")
@as_json()
def _import(args: Args) -> int:
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


COMMANDS = [_info, _cat, _tail, _append, _export, _import]
