"""The commands on one log: ``info``, ``cat``, ``tail``, ``append``, ``export``, ``import``."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, TextIO

import click

from ._args import (
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
    printable,
    progress,
    short,
    take_stdin,
    ts,
)

if TYPE_CHECKING:
    from datetime import datetime

    from ..codec import ConversationCodec, Message
    from ..search import Hit


def _stdin(what: str) -> TextIO:
    """Standard input, or an InputError when the process was started without one."""
    return take_stdin(what)  # a UsageError when a key or password is read from it too


def _read_messages(text: str, source: str = "stdin") -> list[Message]:
    """Parse ``source``'s text: one JSON object, a JSON array of objects, or JSON lines."""
    if not text.strip():
        raise InputError(f"no message on {source}; give a JSON object, an array, or JSON lines")
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
                where, err = (source, whole) if not value else (f"{source} line {number}", exc)
                raise InputError(f"{where} is not valid JSON: {err}") from None
    messages = [value] if isinstance(value, dict) else value
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InputError(
            f"{source} must hold messages (JSON objects): one, an array, or one a line"
        )
    return messages


@command(
    "info",
    "show header and index facts (count, sizes, times)",
    "conversation-codec info chat.log --json",
)
@log_options
@as_json("print one JSON object")
def _info(args: Args) -> int:
    with open_log(args, read_only=True) as codec:
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
    with open_log(args, read_only=True) as codec:
        for seq, message in enumerate(codec):  # streams: bounded memory on long logs
            if args.with_timestamps:
                emit({"seq": seq, "ts": ts(codec.timestamp(seq)), "message": message}, stored=True)
            else:
                emit(message, stored=True)
    return EXIT_OK


@command(
    "tail",
    "print the last N messages: JSON lines (on a terminal: one readable line each); "
    "-f: then follow the log as other processes append, until Ctrl-C",
    "conversation-codec tail chat.log -n 3 -f",
)
@log_options
@click.option("-n", type=WHOLE_NUMBER, default=10, metavar="N", show_default=True)
@click.option("-f", "--follow", is_flag=True, help="keep printing new messages (Ctrl-C stops)")
@as_json("JSON lines even on a terminal (piped output always is)")
def _tail(args: Args) -> int:
    readable = sys.stdout.isatty() and not args.json
    with open_log(args, read_only=True) as codec:
        # A follow starts after the newest message, shown or not (-n 0): its anchor.
        newest = max(args.n, 1) if args.follow else args.n
        hits = list(codec.search(newest_first=True, limit=newest)) if newest else []
        for hit in reversed(hits[: args.n]):
            _show(hit.seq, hit.timestamp, hit.message, readable)
        if args.follow:
            try:
                _Follow(codec, hits[0] if hits else None, readable).run()
            except KeyboardInterrupt:  # how a follow ends: not an error
                return EXIT_OK
    return EXIT_OK


_RECHECK = 1.0  # seconds: how often a follow rereads what it printed last (see _Follow)


class _Follow:
    """Print each message written after ``last`` (the newest message when the follow
    began; None: the log was empty), for ever (the caller stops it).

    ``wait()`` wakes on a count above the last seq, but another process's pop then append
    leaves the count as it was, and a prune, clear or replace moves or drops what was
    printed. So at each wake, and every ``_RECHECK`` seconds, the messages from ``last``'s
    time on are read again (one record to decrypt when nothing changed) and ``last`` looked
    for: at its seq, what follows it is new; at another seq, the history before it changed
    (said on stderr); gone, then the messages written after it (a later time) are the new
    ones, and stderr says the history was rewritten (what replaced the older ones is not
    printed). Timestamps never decrease in a log (FORMAT.md §8.2).
    """

    def __init__(self, codec: ConversationCodec, last: Hit | None, readable: bool) -> None:
        self.codec, self.last, self.readable = codec, last, readable
        self.gone = False  # ``last`` is no longer in the log: only its time counts

    def run(self) -> None:
        from ..errors import LogReplacedError

        while True:
            sys.stdout.flush()
            # wait() polls the index, backing off to 100 ms: no busy loop, any writer process.
            self.codec.wait(self._after(), timeout=_RECHECK)
            try:
                self._catch_up()
            except LogReplacedError:  # rewritten while read: read again (last is kept)
                continue

    def _after(self) -> int:
        if self.last is None:
            return -1
        return self.codec.message_count() - 1 if self.gone else self.last.seq

    def _catch_up(self) -> None:
        last, gone = self.last, self.gone
        found = last is None or gone
        for hit in self.codec.search(since=None if last is None else last.timestamp):
            if not found and last is not None:
                if hit.timestamp == last.timestamp:
                    if hit.message == last.message:
                        found = True  # what was printed last: what follows it is new
                        if hit.seq != last.seq:
                            _warn(f"the history before #{last.seq} changed (now #{hit.seq})")
                        self.last = hit
                    continue  # printed before it, at the same time
                found = True
                self._lost(last)
            elif gone and last is not None and hit.timestamp == last.timestamp:
                continue  # as old as the message lost: printed, or cannot tell
            _show(hit.seq, hit.timestamp, hit.message, self.readable)
            self.last, self.gone = hit, False
        if not found:
            self._lost(last)
            self.gone = True

    @staticmethod
    def _lost(last: Hit | None) -> None:
        if last is not None:
            _warn(
                f"#{last.seq}, printed last, is no longer in the log: its history was "
                "rewritten; following with the messages written after it"
            )


def _warn(text: str) -> None:
    sys.stdout.flush()  # after what was printed before it
    print(f"warning: another process rewrote the log: {text}", file=sys.stderr, flush=True)


@command(
    "pop",
    "remove the last message of a log and print it (a JSON line)",
    "conversation-codec pop chat.log",
)
@log_options
def _pop(args: Args) -> int:
    with open_log(args) as codec:
        message = codec.pop()
    if message is None:
        raise InputError(f"{args.path} holds no message; nothing was removed")
    emit(message, stored=True)
    return EXIT_OK


def _show(seq: int, when: datetime, message: Message, readable: bool) -> None:
    """Print one message: a JSON line, or (on a terminal) time, seq, role and its text."""
    from ..search import searchable_text

    if not readable:
        emit(message, stored=True)
        return
    text = printable(" ".join(" ".join(part.split()) for part in searchable_text(message)))
    text = text if len(text) <= 100 else text[:97] + "..."
    role = printable(str(message.get("role", "-")))
    print(f"{short(when)}  #{seq}  {role:<9}  {text}")


@command(
    "append",
    "append messages read from FILE (default -: stdin); print their seqs",
    """echo '{"role": "user", "content": "hi"}' | conversation-codec append chat.log""",
)
@log_options
@click.argument("source", metavar="[FILE]", default="-")
@durability()
@as_json('print {"path", "seqs"} as one JSON object')
def _append(args: Args) -> int:
    plaintext_needs_plain(args, args.path)
    if args.source == "-":
        messages = _read_messages(_stdin("the messages").read())
    else:
        with open(args.source, encoding="utf-8") as source:
            messages = _read_messages(source.read(), args.source)
    with open_log(args, must_exist=False) as codec:
        seqs = codec.extend(messages)
    if args.json:
        emit({"path": args.path, "seqs": seqs})
    for seq in [] if args.json else seqs:
        print(seq)
    return EXIT_OK


@command(
    "export",
    "write the history to an UNENCRYPTED JSONL or JSON file (mode 0600), or - (stdout)",
    "conversation-codec export chat.log --out chat.jsonl  # plaintext: protect it",
)
@log_options
@click.option("--out", metavar="FILE", required=True, help="the UNENCRYPTED output; - : stdout")
@click.option("--format", type=choice("jsonl", "json"), default="jsonl", metavar="[jsonl|json]")
@click.option("--no-timestamps", is_flag=True, help='omit "timestamp" keys')
@click.option("--force", is_flag=True, help="replace FILE if it exists")
@as_json("print the summary as one JSON object (on stderr with --out -)")
def _export(args: Args) -> int:
    to_stdout = args.out == "-"
    if not to_stdout and not args.force and os.path.lexists(args.out):
        raise InputError(f"{args.out} already exists; pass --force to replace it")
    with open_log(args, read_only=True) as codec:
        sys.stdout.flush()
        count = codec.export(
            sys.stdout.buffer if to_stdout else args.out,
            format=args.format,
            with_timestamps=not args.no_timestamps,
            progress=progress("exporting"),
        )
    where = "stdout" if to_stdout else args.out
    if not to_stdout:
        print(
            f"warning: {where} is UNENCRYPTED: it holds {count} messages in plaintext "
            "(mode 0600); protect it, and delete it when done",
            file=sys.stderr,
        )
    summary = sys.stderr if to_stdout else sys.stdout  # stdout carries the export itself
    if args.json:
        print(json.dumps({"path": where, "messages": count, "format": args.format}), file=summary)
    else:
        print(f"exported {count} messages to {where} ({args.format})", file=summary)
    return EXIT_OK


@command(
    "import",
    "read a history file (legacy, export or log) into a log, keeping the messages "
    "already there (in time order); only --replace discards them",
    "conversation-codec import chat.log old-history.jsonl --merge",
)
@log_options
@click.argument("src", metavar="SRC")  # - : stdin
@legacy_secrets()
@click.option("--merge", is_flag=True, help="add only messages not present")
@click.option("--replace", is_flag=True, help="DISCARD the log's history, keep SRC's only")
@as_json()
def _import(args: Args) -> int:
    plaintext_needs_plain(args, args.path)
    legacy_key, legacy_password = legacy_source(args)
    # SRC "-": stdin as a stream (the library refuses a pipe named by a path: a FIFO planted
    # where a history is expected would block it), read whole up to the library's bound.
    src = _stdin("SRC").buffer if args.src == "-" else args.src
    with open_log(args, must_exist=False) as codec:
        args.reading = args.src  # from here, key errors concern SRC (see _report)
        report = codec.import_(
            src,
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
    for note in report.notes:
        print(f"note: {note}")
    return EXIT_OK


COMMANDS = [_info, _cat, _tail, _append, _pop, _export, _import]
