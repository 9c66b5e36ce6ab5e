"""``ls``, ``copy``, ``delete``, ``prune``, ``pack``: the conversations of a store root
(``search`` also reads roots).

A store root is a directory or a ``postgresql://`` URL (``storage.backend_for``).
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone

import click

from ..errors import ConversationCodecError
from ._args import AGE, LOG_PATH, TIME, as_json, binding, command, options, secret_sources
from ._common import (
    EXIT_ERROR,
    EXIT_OK,
    Args,
    InputError,
    UsageError,
    emit,
    fields,
    log_key,
    open_log,
    password_given,
    progress,
    read_key_file,
    report_unlisted,
    secret_env,
    short,
    speak_cli,
    table,
    ts,
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
@click.argument("src", metavar="SRC", type=LOG_PATH)
@click.argument("dst", metavar="DST", type=LOG_PATH)
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
            print(f"error: {conversation_id}: {speak_cli(_copy_error(error))}", file=sys.stderr)
        print(
            f"copied {len(report.copied)} conversations ({report.messages} messages), "
            f"{len(report.unchanged)} already identical, {len(report.failed)} failed"
        )
    return EXIT_ERROR if report.failed else EXIT_OK


def _copy_error(text: str) -> str:
    """A ``CopyReport.failed`` entry ("ConflictError: ...") said without the class name."""
    name, sep, message = text.partition(": ")
    if not (sep and name.isidentifier() and name.endswith("Error")):
        return text
    if name == "DecryptionError" and not message:  # opaque by design (errors.py)
        return "cannot decrypt it: wrong key or password, or the log was modified"
    return message or text


@command(
    "ls",
    "list the conversations of a store root (id, messages, first, last, bytes); "
    "without a key, from headers and indexes (unverified)",
    "conversation-codec ls conversations/ --json",
)
@click.argument("path", metavar="ROOT", type=LOG_PATH)
@secret_sources(password=False)
@as_json()
def _ls(args: Args) -> int:
    from ..store import ConversationStore

    _check_root(args.path)
    key = log_key(args)
    # No key: list what headers and indexes tell (a sealed log's rows are "unverified").
    packs: list[tuple[str, Exception]] = []  # unreadable packs: reported after the list
    store = ConversationStore(args.path, encryption_key=key)
    found = store.infos(keyless=key is None, on_error=lambda *bad: packs.append(bad))
    failed = bool(packs) or any(c.status not in _LISTED for c in found)  # listed; exit 1
    for _pack, exc in packs:  # the error names the pack
        print(f"error: {speak_cli(str(exc))}", file=sys.stderr)
    failed = report_unlisted(args.path, "listed") or failed
    if args.json:
        for info in found:
            emit(fields(info))
        return EXIT_ERROR if failed else EXIT_OK
    status = any(c.status != "ok" for c in found)
    rows = [("ID", "MESSAGES", "FIRST", "LAST", "BYTES", *(("STATUS",) if status else ()))]
    for c in found:
        first, last = short(c.first_timestamp), short(c.last_timestamp)
        count = str(c.message_count) if c.status in _LISTED else "-"
        count += "+" if c.status == "unverified" and c.error else ""  # the index lags the log
        row = (c.conversation_id, count, first, last, f"{c.disk_bytes:,}")
        rows.append((*row, _STATUS.get(c.status, c.status)) if status else row)
    table(rows, right=frozenset({1, 4}))
    if any(c.status == "unverified" for c in found):
        print(
            "unverified: no key; counts and times are what each log's index says "
            "(a cache the key would check)",
            file=sys.stderr,
        )
    return EXIT_ERROR if failed else EXIT_OK


_LISTED = ("ok", "unverified")
_STATUS = {"unverified": "unverified (no key)"}


@command(
    "delete",
    "delete one conversation of a store: its log, index and attachments",
    "conversation-codec delete conversations/ alice",
)
@click.argument("path", metavar="ROOT", type=LOG_PATH)
@click.argument("conversation_id", metavar="ID")
@secret_sources(password=False)
@as_json()
def _delete(args: Args) -> int:
    from ..store import ConversationStore

    _check_root(args.path)
    store = ConversationStore(args.path, encryption_key=log_key(args))
    if not store.delete(args.conversation_id):
        raise InputError(f"{args.conversation_id}: no such conversation in {args.path}")
    if args.json:
        emit({"root": args.path, "deleted": args.conversation_id})
    else:
        print(f"deleted {args.conversation_id} from {args.path}")
    return EXIT_OK


@command(
    "prune",
    "delete the messages of a log older than a time, or the conversations of a store "
    "root whose last message is older",
    "conversation-codec prune chat.log --before 2026-01-01\n"
    "  conversation-codec prune conversations/ --older-than 90d",
    one_of=(("before", "older_than"),),
)
@click.argument("path", metavar="PATH", type=LOG_PATH)
@secret_sources(password=True)
@binding()
@click.option("--before", type=TIME, metavar="TIME", help="UTC, e.g. 2026-10-01T12:00Z")
@click.option("--older-than", type=AGE, metavar="AGE", help="e.g. 30m, 12h, 7d, 2w")
@as_json()
def _prune(args: Args) -> int:
    from .._time import to_datetime, to_us
    from ..storage import is_url

    now = datetime.now(timezone.utc)
    cutoff = (
        now - args.older_than
        if args.before is None
        else to_datetime(to_us(args.before, "--before"))
    )
    if is_url(args.path) or os.path.isdir(args.path):
        return _prune_store(args, cutoff)
    with open_log(args) as codec:
        removed = codec.prune(cutoff)
    if args.json:
        emit({"path": args.path, "removed": removed, "before": ts(cutoff)})
    else:
        print(f"removed {removed} messages older than {ts(cutoff)} from {args.path}")
    return EXIT_OK


def _prune_store(args: Args, cutoff: datetime) -> int:
    from ..store import ConversationStore

    if password_given(args):
        raise UsageError("a store root takes --key-env or --key-file, not a password")
    failed: dict[str, str] = {}

    def keep(conversation_id: str, exc: ConversationCodecError) -> None:
        failed[conversation_id] = speak_cli(str(exc))  # kept; the others are pruned

    store = ConversationStore(args.path, encryption_key=log_key(args))
    deleted = store.prune(cutoff, on_error=keep)
    if args.json:
        emit({"root": args.path, "before": ts(cutoff), "deleted": deleted, "failed": failed})
    else:
        for conversation_id, error in failed.items():
            print(f"error: {conversation_id}: {error}", file=sys.stderr)
        shown = f": {', '.join(deleted)}" if deleted else ""
        print(f"deleted {len(deleted)} conversations last written before {ts(cutoff)}{shown}")
    return EXIT_ERROR if failed else EXIT_OK


@command(
    "pack",
    "move a store's small conversations whose last message is older than AGE (default: "
    "all) into pack files: one file instead of three per conversation; the first write "
    "to a packed conversation moves it back to its own file",
    "conversation-codec pack conversations/ --older-than 7d",
)
@click.argument("path", metavar="ROOT", type=LOG_PATH)
@secret_sources(password=False)
@click.option("--older-than", type=AGE, metavar="AGE", help="e.g. 12h, 7d, 2w")
@click.option("--max-bytes", type=int, default=16 << 20, metavar="N", help="bytes per pack")
@as_json()
def _pack(args: Args) -> int:
    from ..store import ConversationStore

    _check_root(args.path)
    store = ConversationStore(args.path, encryption_key=log_key(args))
    report = store.pack(args.older_than, max_bytes=args.max_bytes)
    if args.json:
        emit(fields(report))
    else:
        print(
            f"packed {len(report.packed)} conversations ({report.log_bytes:,} bytes) into "
            f"{len(report.packs)} pack(s); {len(report.skipped)} kept loose"
        )
    return EXIT_OK


COMMANDS = [_ls, _copy, _delete, _prune, _pack]
