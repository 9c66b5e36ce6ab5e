"""``search``: find messages in one log, or across the logs of a store root."""

from __future__ import annotations

import argparse
import os
import re
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..errors import ConversationCodecError
from ._args import Parser, Sub, age, command, secret_sources, time_text, whole_number
from ._common import EXIT_ERROR, EXIT_OK, UsageError, emit, log_key, open_log, printable, short, ts

if TYPE_CHECKING:
    from ..codec import Message
    from ..search import Hit

# How search splits a query into terms (search.py's rule), to find the span to highlight.
_TERMS = re.compile(r'"([^"]*)"?|([^\s"]+)')
_BOLD, _RESET = "\x1b[1m", "\x1b[0m"


def add_commands(sub: Sub, as_json: Parser) -> None:
    """Add ``search`` to ``sub``."""
    search = command(
        sub,
        "search",
        _cmd_search,
        "find messages by words, time and role in a log or across a store root",
        'conversation-codec search chat.log "refund order" --last 7d --role user\n'
        "  conversation-codec search conversations/ refund --since 2026-10-01 --json",
        [secret_sources(password=True), as_json],
    )
    search.add_argument(
        "path", metavar="PATH", help="a log file, or a store root (directory or URL)"
    )
    search.add_argument(
        "query",
        metavar="QUERY",
        nargs="?",
        help='words that must all appear (any case); "a phrase" in quotes; omit to match all',
    )
    when = search.add_argument_group("time (UTC; since inclusive, until exclusive)")
    start = when.add_mutually_exclusive_group()
    start.add_argument("--since", type=time_text, metavar="TIME", help="e.g. 2026-10-01T12:00Z")
    start.add_argument("--last", type=age, metavar="AGE", help="since AGE ago: 30m, 12h, 7d, 2w")
    when.add_argument("--until", type=time_text, metavar="TIME", help="e.g. 2026-10-02")
    search.add_argument("--role", action="append", help="only this role (repeatable)")
    search.add_argument("--limit", type=whole_number, metavar="N", help="stop after N hits")
    search.add_argument("--newest-first", action="store_true", help="newest hits first")
    search.add_argument(
        "--regex",
        action="store_true",
        help="QUERY is a regular expression, run by RE2 in linear time "
        '(pip install "conversation-codec[regex]"); no backreferences or lookaround',
    )
    search.add_argument("--case-sensitive", action="store_true", help="match case exactly")


def _cmd_search(args: argparse.Namespace) -> int:
    from ..storage import is_url
    from ..store import ConversationStore

    now = datetime.now(timezone.utc)
    options: dict[str, Any] = {
        "since": args.since if args.last is None else ts(now - args.last),
        "until": args.until,
        "role": args.role,
        "limit": args.limit,
        "newest_first": args.newest_first,
        "regex": args.regex,
        "case_sensitive": args.case_sensitive,
    }
    bold = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    if is_url(args.path) or os.path.isdir(args.path):
        if args.password_env is not None:
            raise UsageError("a store root takes --key-env or --key-file, not --password-env")
        store = ConversationStore(args.path, encryption_key=log_key(args))
        skipped: list[str] = []

        def skip(conversation_id: str, exc: ConversationCodecError) -> None:
            skipped.append(conversation_id)  # reported, and the search carries on
            print(f"error: {conversation_id}: {exc}", file=sys.stderr)

        for conversation_id, hit in store.search(args.query, on_error=skip, **options):
            _show_hit(args, hit, conversation_id, bold)
        return EXIT_ERROR if skipped else EXIT_OK
    with open_log(args) as codec:
        for hit in codec.search(args.query, **options):
            _show_hit(args, hit, None, bold)
    return EXIT_OK


def _show_hit(args: argparse.Namespace, hit: Hit, conversation_id: str | None, bold: bool) -> None:
    if args.json:
        found = {} if conversation_id is None else {"conversation_id": conversation_id}
        emit({**found, "seq": hit.seq, "timestamp": ts(hit.timestamp), "message": hit.message})
        return
    where = f"#{hit.seq}" if conversation_id is None else f"{conversation_id} #{hit.seq}"
    where, role = printable(where), printable(str(hit.message.get("role", "-")))
    snippet = _snippet(hit.message, args.query, args.regex, args.case_sensitive, bold)
    print(f"{short(hit.timestamp)}  {where}  {role:<9}  {snippet}")


def _snippet(message: Message, query: str | None, regex: bool, exact: bool, bold: bool) -> str:
    """Return ~80 characters of the message's searchable text around its first match."""
    from ..search import Query, searchable_text

    text = printable(" ".join(" ".join(part.split()) for part in searchable_text(message)))
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
