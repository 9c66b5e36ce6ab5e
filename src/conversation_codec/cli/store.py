"""``ls`` and ``copy``: the conversations of a store root (``search`` also reads roots).

A store root is a directory or a ``postgresql://`` URL (``storage.backend_for``).
"""

from __future__ import annotations

import argparse
import os
import sys

from ._args import Parser, Sub, command, secret_sources
from ._common import (
    EXIT_ERROR,
    EXIT_OK,
    InputError,
    UsageError,
    emit,
    fields,
    log_key,
    read_key_file,
    secret_env,
    short,
    table,
)


def add_commands(sub: Sub, as_json: Parser) -> None:
    """Add ``ls`` to ``sub``."""
    ls = command(
        sub,
        "ls",
        _cmd_ls,
        "list the conversations of a store root (id, messages, first, last, bytes)",
        "conversation-codec ls conversations/ --json",
        [secret_sources(password=False), as_json],
    )
    ls.add_argument("path", metavar="ROOT", help="the store's root directory, or its URL")
    copy = command(
        sub,
        "copy",
        _cmd_copy,
        "copy conversations between two stores (directories or postgresql:// URLs), "
        "verified; run again to resume",
        "conversation-codec copy conversations/ postgresql:///agents --to-key-env NEW_KEY",
        [secret_sources(password=False), as_json],
    )
    copy.add_argument("src", metavar="SRC", help="the source store's root directory or URL")
    copy.add_argument("dst", metavar="DST", help="the destination store's root or URL")
    copy.add_argument("ids", metavar="ID", nargs="*", help="only these conversations")
    to = copy.add_argument_group("the destination's key (default: the source's)")
    where = to.add_mutually_exclusive_group()
    where.add_argument("--to-key-env", metavar="VAR", help="variable holding its key")
    where.add_argument("--to-key-file", metavar="FILE", help="read its key from FILE (0600)")
    where.add_argument("--to-plain", action="store_true", help="write it UNENCRYPTED")
    copy.add_argument(
        "--overwrite", action="store_true", help="replace conversations that differ in DST"
    )


def _check_root(root: str) -> None:
    from ..storage import is_url

    if not is_url(root) and not os.path.isdir(root):
        raise InputError(f"{root}: no such directory")


def _cmd_copy(args: argparse.Namespace) -> int:
    from ..maintenance.copy import copy_conversations
    from ..store import ConversationStore

    _check_root(args.src)
    key = log_key(args)
    if args.to_key_file is not None:
        to_key: str | None = read_key_file(args.to_key_file)
    elif args.to_key_env is not None:
        to_key = secret_env(args.to_key_env, "destination key").strip()
    else:
        to_key = None if args.to_plain else key
    if to_key is None and not args.to_plain:
        raise UsageError(
            "no key for the destination: the copy would be UNENCRYPTED. Pass --to-key-env "
            "VAR or --to-key-file FILE, or --to-plain to write plaintext on purpose"
        )
    src = ConversationStore(args.src, encryption_key=key)
    dst = ConversationStore(args.dst, encryption_key=to_key)
    report = copy_conversations(
        src,
        dst,
        args.ids or None,
        overwrite=args.overwrite,
        progress=_progress if sys.stderr.isatty() and not args.json else None,
    )
    if args.json:
        emit(fields(report))
    else:
        for conversation_id, error in report.failed.items():
            print(f"error: {conversation_id}: {error}", file=sys.stderr)
        print(
            f"copied {len(report.copied)} conversations ({report.messages} messages), "
            f"{len(report.unchanged)} already identical, {len(report.failed)} failed"
        )
    return EXIT_ERROR if report.failed else EXIT_OK


def _progress(done: int, total: int, conversation_id: str) -> None:
    filled = 30 * done // max(total, 1)
    name = conversation_id[-40:]
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{total} {name:<40}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _cmd_ls(args: argparse.Namespace) -> int:
    from ..store import ConversationStore

    _check_root(args.path)
    found = ConversationStore(args.path, encryption_key=log_key(args)).infos()
    failed = any(c.status != "ok" for c in found)  # listed with their status; exit 1
    if args.json:
        for info in found:
            emit(fields(info))
        return EXIT_ERROR if failed else EXIT_OK
    rows = [("ID", "MESSAGES", "FIRST", "LAST", "BYTES", *(("STATUS",) if failed else ()))]
    for c in found:
        first, last = short(c.first_timestamp), short(c.last_timestamp)
        count = str(c.message_count) if c.status == "ok" else "-"
        row = (c.conversation_id, count, first, last, f"{c.disk_bytes:,}")
        rows.append((*row, c.status) if failed else row)
    table(rows, right=frozenset({1, 4}))
    return EXIT_ERROR if failed else EXIT_OK
