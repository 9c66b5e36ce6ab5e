"""Commands that check or rewrite logs: ``verify``, ``salvage``, ``compact``, ``rekey``,
``passwd``, and ``migrate`` (legacy histories into logs)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

from ..errors import ConversationCodecError
from ._args import (
    ENV_NAME,
    LOG_PATH,
    as_json,
    binding,
    command,
    legacy_secrets,
    log_options,
    options,
    password_sources,
    secret_sources,
)
from ._common import (
    EXIT_CORRUPT,
    EXIT_ERROR,
    EXIT_OK,
    Args,
    InputError,
    UsageError,
    emit,
    fields,
    hide_keys,
    legacy_source,
    log_key,
    log_password,
    open_log,
    password_from,
    password_given,
    password_source,
    plaintext_needs_plain,
    progress,
    read_key_file,
    report_error,
    secret_env,
    speak_cli,
    table,
    unlisted_logs,
)

if TYPE_CHECKING:
    from ..maintenance.compact import CompactionReport
    from ..maintenance.migrate import BatchReport
    from ..storage.file.check import VerifyReport


@command(
    "verify",
    "check every record of one or more logs (a store root, directory or postgresql:// URL: "
    "each of its conversations, packed ones too, and every other *.log in it); "
    "exit 3 when any is damaged",
    "conversation-codec verify chats/*.log",
)
@click.argument("paths", metavar="PATH...", nargs=-1, required=True, type=LOG_PATH)
@secret_sources(password=True)
@binding()
@as_json()
def _verify(args: Args) -> int:
    from ..storage import is_url

    worst = EXIT_OK
    # A bar over the logs on a terminal; the reports follow it (not mixed into its line).
    bar = progress("verifying", quiet=args.json or len(args.paths) < 2)
    pending: list[VerifyReport] = []
    log_password(args)  # a prompt asks once, for every log (kept on args)
    for done, path in enumerate(args.paths, 1):
        one = Args(**{**vars(args), "path": path})
        try:
            packs: list[tuple[Exception, str]] = []  # unreadable packs and logs: after the rest
            store = is_url(path) or os.path.isdir(path)
            reports = _verify_store(one, packs) if store else None
            if reports is None:
                with open_log(one, read_only=True) as codec:
                    reports = [codec.verify()]
            for report in reports:
                pending.append(report)
                worst = worst if report.ok else max(worst, EXIT_CORRUPT)
            if bar is None:
                _show_verify(args, pending)  # this root's reports, then the packs they missed
            for exc, at in packs:  # damage (exit 3), a newer pack version or another key (1)
                where = Args(**{**vars(one), "path": at})
                worst = max(worst, min(report_error(exc, where), EXIT_CORRUPT))
        except (ConversationCodecError, OSError, ValueError, InputError) as exc:
            worst = max(worst, report_error(exc, one))  # one unreadable log does not stop the rest
        if bar is not None:
            bar(done, len(args.paths), path)
        else:
            _show_verify(args, pending)
    _show_verify(args, pending)
    return worst


def _verify_store(args: Args, unreadable: list[tuple[Exception, str]]) -> list[VerifyReport]:
    """Verify every conversation of a store root (packed ones included, FORMAT.md §18),
    then every other ``*.log`` in it as a log of its own (``unlisted_logs``); each
    unreadable pack, and each log that does not open (another key, a packed entry failing
    its CRC), goes to ``unreadable`` with where it is; the rest is verified."""
    from ..store import ConversationStore

    store = ConversationStore(args.path, encryption_key=log_key(args), password=log_password(args))
    reports = []
    for conversation_id in store.ids(on_error=lambda _, exc: unreadable.append((exc, args.path))):
        try:
            with store.open(conversation_id) as codec:
                reports.append(codec.verify())
        except ConversationCodecError as exc:
            unreadable.append((exc, str(store.path(conversation_id))))
    for path in unlisted_logs(args.path):  # no store id in its name: a log by itself
        try:
            with open_log(Args(**{**vars(args), "path": path}), read_only=True) as codec:
                reports.append(codec.verify())
        except (ConversationCodecError, OSError, ValueError, InputError) as exc:
            unreadable.append((exc, path))
    return reports


def _show_verify(args: Args, pending: list[VerifyReport]) -> None:
    """Print the reports not printed yet."""
    for report in pending:
        if args.json:
            emit(report.as_dict())
        else:
            _show_one(report)
    pending.clear()


def _show_one(report: VerifyReport) -> None:
    state = "ok" if report.ok else "DAMAGED"
    count = f"{report.records} intact record{'s' * (report.records != 1)}"
    found = f", {len(report.problems)} problem(s)" if report.problems else ""
    print(f"{report.path}: {state}, {count}{found}")
    if report.keyword_index is not None:
        print(f"  keyword index: covers {report.keyword_index} of {report.records} records")
    for problem in report.problems:
        # index-* offsets are into the .idx file, the others into the log
        where = "index byte" if problem.kind.startswith("index-") else "byte"
        note = "" if problem.is_damage else " (no data lost)"
        print(f"  {where} {problem.offset}: {problem.kind}: {problem.detail}{note}")


@command(
    "salvage",
    "copy the intact records of a damaged log into a new log (SRC is only read)",
    "conversation-codec salvage chat.log rescued.log",
)
@log_options
@click.argument("dst", metavar="DST", type=LOG_PATH)
@as_json()
def _salvage(args: Args) -> int:
    from ..maintenance.verify import salvage

    if not os.path.lexists(args.path):
        raise InputError(f"{args.path}: no such log")
    plaintext_needs_plain(args, args.dst)
    report = salvage(
        args.path,
        args.dst,
        encryption_key=log_key(args),
        password=log_password(args),
        context=args.context,
    )
    if args.json:
        emit(fields(report))
        return EXIT_OK
    print(f"recovered {report.recovered} messages into {report.destination}")
    lost = ", ".join(str(seq) for seq in report.lost_seqs[:50])
    more = f" and {len(report.lost_seqs) - 50} more" if len(report.lost_seqs) > 50 else ""
    if report.more_lost:  # damage past the last seq known, and no index counts its records
        after = report.recovered + len(report.lost_seqs) - 1  # the last seq known to exist
        unknown = "an unknown number of records" + (f" after seq {after}" if after >= 0 else "")
        print(f"lost seqs: {lost}{more}, and {unknown}" if lost else f"lost: {unknown}")
    else:
        print(f"lost seqs: {lost}{more}" if lost else "lost seqs: none")
    print(f"{report.source} was only read; check {report.destination}, then replace the log")
    return EXIT_OK


def _show_rewrite(args: Args, what: str, report: CompactionReport) -> int:
    if args.json:
        emit({"path": args.path, **fields(report)})
    else:
        print(
            f"{what} {args.path}: {report.messages} messages kept, "
            f"{report.bytes_before:,} -> {report.bytes_after:,} bytes"
        )
    return EXIT_OK


@command(
    "reindex",
    "build a log's encrypted keyword index again (turns it on; FORMAT.md §17)",
    "conversation-codec reindex chat.log",
)
@log_options
@as_json()
def _reindex(args: Args) -> int:
    with open_log(args) as codec:
        count = codec.reindex(progress=progress("indexing", quiet=args.json))
    if args.json:
        emit({"path": args.path, "messages": count})
    else:
        print(f"indexed {count} messages of {args.path}; searches of it now use the index")
    return EXIT_OK


@command(
    "compact",
    "rewrite a log: re-seal, re-compress, rebuild the index",
    "conversation-codec compact chat.log",
)
@log_options
@as_json()
def _compact(args: Args) -> int:
    plaintext_needs_plain(args, args.path)
    with open_log(args) as codec:
        report = codec.compact(progress=progress("compacting", quiet=args.json))
    return _show_rewrite(args, "compacted", report)


@command(
    "rekey",
    "re-encrypt a log under a new key (the old key comes from --key-env/--key-file)",
    "CONVERSATION_KEY=$(cat old.key) NEW_KEY=$(cat new.key) "
    "conversation-codec rekey chat.log --new-key-env NEW_KEY",
    one_of=(("new_key_env", "new_key_file"),),
)
@log_options
@click.option("--new-key-env", type=ENV_NAME, metavar="VAR", help="variable holding the new key")
@click.option("--new-key-file", metavar="FILE", help="read the new key from FILE")
@as_json()
def _rekey(args: Args) -> int:
    if args.new_key_file is not None:
        new_key = read_key_file(args.new_key_file)
    else:
        new_key = secret_env(args.new_key_env, "new key").strip()
    if new_key == log_key(args):  # re-encrypting under the same key changes nothing
        raise UsageError(
            "the new key is the key the log is already encrypted with (--key-env/--key-file); "
            "name another key with --new-key-env or --new-key-file"
        )
    with open_log(args) as codec:
        report = codec.rotate_key(new_key)
    _show_rewrite(args, "re-encrypted", report)
    if not args.json:
        print("only the new key opens it now; keep the old key until backups are re-keyed")
    return EXIT_OK


@command(
    "passwd",
    "change the password of a password-protected log",
    "OLD_PW=... NEW_PW=... conversation-codec passwd chat.log "
    "--password-env OLD_PW --new-password-env NEW_PW",
    one_of=(
        ("password_env", "password_file", "password_prompt"),
        ("new_password_env", "new_password_file", "new_password_prompt"),
    ),
)
@click.argument("path", metavar="PATH", type=LOG_PATH)
@options(*password_sources("password", "the current password"))
@options(*password_sources("new_password", "the new password"))
@as_json()
def _passwd(args: Args) -> int:
    old = log_password(args)
    new = password_from(args, "new_password", "new password", twice=True)
    assert old is not None and new is not None  # one_of: each has a source
    with open_log(args) as codec:
        report = codec.change_password(old, new)
    return _show_rewrite(args, "changed the password of", report)


@command(
    "migrate",
    "convert legacy histories (files, or directories recursively) into logs; the new "
    "logs' key or password comes from --key-*/--password-* (the source's: --legacy-*)",
    "CONVERSATION_KEY=$(cat chat.key) conversation-codec migrate histories/ --out logs/",
)
@click.argument("paths", metavar="PATH...", nargs=-1, required=True, type=LOG_PATH)
@secret_sources(password=True)
@legacy_secrets()
@click.option(
    "--out",
    metavar="ROOT",
    type=LOG_PATH,
    help="write each file as a conversation of the store at ROOT (id: its path under the "
    "folder given, without .jsonl/.json/.enc); sources untouched",
)
@click.option("--tree", is_flag=True, help="with --out: keep the folders and file names instead")
@click.option("--no-backup", is_flag=True, help="in place: keep no .bak copy")
@click.option("--dry-run", is_flag=True, help="read and check; write nothing")
@as_json()
def _migrate(args: Args) -> int:
    from ..maintenance.migrate import migrate_many

    if not args.dry_run:  # a dry run writes nothing, and says whether it would be plaintext
        plaintext_needs_plain(args, "the new logs")
    key = log_key(args)
    legacy_key, legacy_password = legacy_source(args)
    if args.tree and args.out is None:
        raise UsageError("--tree goes with --out ROOT")
    report = migrate_many(
        args.paths,
        out_dir=args.out if args.tree else None,
        store=None if args.tree else args.out,
        encryption_key=key,
        log_password=log_password(args, creating=True),
        legacy_key=legacy_key,
        password=legacy_password,
        backup=not args.no_backup,
        dry_run=args.dry_run,
        progress=progress("migrating", quiet=args.json),
        io=args.io,
    )
    if args.json:
        found = report.as_dict()
        for item in found["files"]:  # a key given where a path belongs is never shown
            item["reason"] = hide_keys(speak_cli(item["reason"], legacy=True))
            for name in ("path", "destination", "backup"):
                if isinstance(item.get(name), str):
                    item[name] = hide_keys(item[name])
        emit({**found, "encrypted": key is not None or password_given(args)})
    else:
        _show_batch(args, report, key is not None)
    return EXIT_OK if report.ok else EXIT_ERROR


def _show_batch(args: Args, report: BatchReport, encrypted: bool) -> None:
    rows = [("STATUS", "FILE", "DETAILS")]
    for item in report.items:
        notes = [] if item.report is None else [n for n in item.report.notes if n != item.reason]
        details = speak_cli("; ".join([item.reason, *notes]), legacy=True)
        rows.append((item.status, hide_keys(str(item.path)), hide_keys(details)))
    if report.items:
        table(rows)
    dry = " (dry run: nothing was written)" if report.dry_run else ""
    counts = [f"{len(report.converted)} converted", f"{len(report.skipped)} skipped"]
    print(", ".join([*counts, f"{len(report.failed)} failed"]) + dry)
    source = f"--key-file {args.key_file}" if args.key_file else f"${args.key_env}"
    if password_given(args):
        print(f"new logs are protected by the password from {password_source(args)}")
    elif encrypted:
        print(f"new logs are encrypted with the key from {source}")
    else:
        how = "--plain" if args.plain else f"no key in {source}; a real run needs --plain"
        print(f"new logs are PLAINTEXT ({how})")


COMMANDS = [_verify, _salvage, _reindex, _compact, _rekey, _passwd, _migrate]
