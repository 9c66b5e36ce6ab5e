"""``search``: find messages in one log, or across the logs of a store root."""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import click

from ..errors import ConversationCodecError
from ._args import (
    AGE,
    LOG_PATH,
    TIME,
    WHOLE_NUMBER,
    as_json,
    command,
    options,
    secret_sources,
)
from ._common import (
    EXIT_ERROR,
    EXIT_OK,
    Args,
    UsageError,
    emit,
    log_key,
    open_log,
    password_given,
    printable,
    report_unlisted,
    short,
    speak_cli,
    ts,
)

if TYPE_CHECKING:
    from ..codec import Message
    from ..search import Hit, Query

_BOLD, _RESET = "\x1b[1m", "\x1b[0m"
EXIT_NO_MATCH = EXIT_ERROR  # nothing matched: 1, as grep (an error is 1 too)


@command(
    "search",
    "find messages by words, time and role in a log or across a store root; "
    "exit 1 when nothing matches (as grep)",
    'conversation-codec search chat.log "refund order" --last 7d --role user\n'
    "  conversation-codec search conversations/ refund --since 2026-10-01 --json",
)
@click.argument("path", metavar="PATH", type=LOG_PATH)
@click.argument("query", metavar="QUERY", required=False)
@secret_sources(password=True)
@options(
    click.option("--since", type=TIME, metavar="TIME", help="UTC, inclusive: 2026-10-01T12:00Z"),
    click.option("--last", type=AGE, metavar="AGE", help="since AGE ago: 30m, 12h, 7d, 2w"),
    click.option("--until", type=TIME, metavar="TIME", help="UTC, exclusive: 2026-10-02"),
)
@click.option("--role", multiple=True, help="only this role (repeatable)")
@click.option("--limit", type=WHOLE_NUMBER, metavar="N", help="stop after N hits")
@click.option("--newest-first", is_flag=True, help="newest hits first")
@click.option(
    "--regex",
    is_flag=True,
    help="QUERY is a regular expression, run by RE2 in linear time "
    '(pip install "conversation-codec[regex]"); no backreferences or lookaround',
)
@click.option("--case-sensitive", is_flag=True, help="match case exactly")
@as_json()
def _search(args: Args) -> int:
    from ..search import Query
    from ..storage import is_url
    from ..store import ConversationStore

    now = datetime.now(timezone.utc)
    options: dict[str, Any] = {
        "since": args.since if args.last is None else ts(now - args.last),
        "until": args.until,
        "role": args.role or None,
        "limit": args.limit,
        "newest_first": args.newest_first,
        "regex": args.regex,
        "case_sensitive": args.case_sensitive,
    }
    bold = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    # The library's own matcher finds the span to highlight (SearchError: a bad regex).
    matcher = Query(args.query, regex=args.regex, case_sensitive=args.case_sensitive)
    if is_url(args.path) or os.path.isdir(args.path):
        if password_given(args):
            raise UsageError("a store root takes --key-env or --key-file, not a password")
        store = ConversationStore(args.path, encryption_key=log_key(args))
        skipped: list[str] = []

        def skip(conversation_id: str, exc: ConversationCodecError) -> None:
            skipped.append(conversation_id)  # reported, and the search carries on
            text = speak_cli(str(exc))  # an unreadable pack's error names its path first
            named = text.startswith((f"{conversation_id}:", f"{conversation_id} "))
            print(f"error: {text if named else f'{conversation_id}: {text}'}", file=sys.stderr)

        found = 0
        for conversation_id, hit in store.search(args.query, on_error=skip, **options):
            _show_hit(args, hit, conversation_id, matcher, bold)
            found += 1
        if report_unlisted(args.path, "searched"):
            skipped.append(args.path)
        return EXIT_ERROR if skipped else EXIT_OK if found else EXIT_NO_MATCH
    found = 0
    with open_log(args, read_only=True) as codec:
        for hit in codec.search(args.query, **options):
            _show_hit(args, hit, None, matcher, bold)
            found += 1
    return EXIT_OK if found else EXIT_NO_MATCH


def _show_hit(
    args: Args, hit: Hit, conversation_id: str | None, matcher: Query, bold: bool
) -> None:
    if args.json:
        found = {} if conversation_id is None else {"conversation_id": conversation_id}
        emit(
            {**found, "seq": hit.seq, "timestamp": ts(hit.timestamp), "message": hit.message},
            stored=True,
        )
        return
    where = f"#{hit.seq}" if conversation_id is None else f"{conversation_id} #{hit.seq}"
    where, role = printable(where), printable(str(hit.message.get("role", "-")))
    snippet = _snippet(hit.message, matcher, bold)
    print(f"{short(hit.timestamp)}  {where}  {role:<9}  {snippet}")


def _snippet(message: Message, matcher: Query, bold: bool) -> str:
    """Return ~80 characters of the message's searchable text around its first match."""
    from ..search import searchable_text

    text = printable(" ".join(" ".join(part.split()) for part in searchable_text(message)))
    span = matcher.span(text)
    start, end = span or (0, 0)
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


COMMANDS = [_search]
