"""``ls`` and ``copy``: the conversations of a store root (``search`` also reads roots).

A store root is a directory or a ``postgresql://`` URL (``storage.backend_for``).
"""

from __future__ import annotations

import os
import sys

import click

from ._args import as_json, command, options, secret_sources
from ._common import (
    EXIT_ERROR,
    EXIT_OK,
    Args,
    InputError,
    UsageError,
    emit,
    fields,
    log_key,
    progress,
    read_key_file,
    secret_env,
    short,
    speak_cli,
    table,
)


def _check_root(root: str) -> None:
    from ..storage import is_url

    if not is_url(root) and not os.path.isdir(root):
        raise InputError(f"{root}: no such directory")


@command(
    "copy",
    "copy conversations between two stores (directories or postgresql:// URLs), "
    "verified; run again to resume",
    "conversation-codec copy conversations/ postgresql:///agents --to-key-env NEW_KEY",
)
@click.argument("src", metavar="SRC")
@click.argument("dst", metavar="DST")
@click.argument("ids", metavar="[ID]...", nargs=-1)
@secret_sources(password=False)
@options(
    click.option("--to-key-env", metavar="VAR", help="variable holding DST's key"),
    click.option("--to-key-file", metavar="FILE", help="read DST's key from FILE (0600)"),
    click.option("--to-plain", is_flag=True, help="write DST UNENCRYPTED"),
)
@click.option("--overwrite", is_flag=True, help="replace conversations that differ in DST")
@as_json()
def _copy(args: Args) -> int:
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
        progress=progress("copying", quiet=args.json),
    )
    if args.json:
        emit(fields(report))
    else:
        for conversation_id, error in report.failed.items():
            print(f"error: {conversation_id}: {speak_cli(str(error))}", file=sys.stderr)
        print(
            f"copied {len(report.copied)} conversations ({report.messages} messages), "
            f"{len(report.unchanged)} already identical, {len(report.failed)} failed"
        )
    return EXIT_ERROR if report.failed else EXIT_OK


@command(
    "ls",
    "list the conversations of a store root (id, messages, first, last, bytes)",
    "conversation-codec ls conversations/ --json",
)
@click.argument("path", metavar="ROOT")
@secret_sources(password=False)
@as_json()
def _ls(args: Args) -> int:
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


COMMANDS = [_ls, _copy]
