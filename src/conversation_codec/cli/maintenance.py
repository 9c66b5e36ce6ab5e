"""Commands that check or rewrite logs: ``verify``, ``salvage``, ``compact``, ``rekey``,
``passwd``, and ``migrate`` (legacy histories into logs)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from ..errors import ConversationCodecError
from ._args import Parser, Sub, binding, command, env_var_name, legacy_secrets, secret_sources
from ._common import (
    EXIT_CORRUPT,
    EXIT_ERROR,
    EXIT_OK,
    InputError,
    emit,
    fields,
    legacy_source,
    log_key,
    log_password,
    open_log,
    plaintext_needs_plain,
    progress,
    read_key_file,
    report_error,
    secret_env,
    table,
)

if TYPE_CHECKING:
    from ..maintenance.compact import CompactionReport
    from ..maintenance.migrate import BatchReport
    from ..storage.file.check import VerifyReport


def add_repair_commands(sub: Sub, log: Parser, as_json: Parser) -> None:
    """Add ``verify``, ``salvage``, ``compact``, ``rekey`` and ``passwd`` to ``sub``."""
    verify = command(
        sub,
        "verify",
        _cmd_verify,
        "check every record of one or more logs; exit 3 when any is damaged",
        "conversation-codec verify chats/*.log",
        [secret_sources(password=True), binding(), as_json],
    )
    verify.add_argument("paths", metavar="PATH", nargs="+", help="log files")
    salvage_cmd = command(
        sub,
        "salvage",
        _cmd_salvage,
        "copy the intact records of a damaged log into a new log (SRC is only read)",
        "conversation-codec salvage chat.log rescued.log",
        [log, as_json],
    )
    salvage_cmd.add_argument("dst", metavar="DST", help="the new log (must not exist)")
    command(
        sub,
        "compact",
        _cmd_compact,
        "rewrite a log: re-seal, re-compress, rebuild the index",
        "conversation-codec compact chat.log",
        [log, as_json],
    )
    rekey = command(
        sub,
        "rekey",
        _cmd_rekey,
        "re-encrypt a log under a new key (the old key comes from --key-env/--key-file)",
        "CONVERSATION_KEY=$(cat old.key) NEW_KEY=$(cat new.key) "
        "conversation-codec rekey chat.log --new-key-env NEW_KEY",
        [log, as_json],
    )
    new = rekey.add_argument_group("the new key (never taken from the command line)")
    new_source = new.add_mutually_exclusive_group(required=True)
    new_source.add_argument(
        "--new-key-env", type=env_var_name, metavar="VAR", help="variable holding the new key"
    )
    new_source.add_argument("--new-key-file", metavar="FILE", help="read the new key from FILE")
    passwd = command(
        sub,
        "passwd",
        _cmd_passwd,
        "change the password of a password-protected log",
        "OLD_PW=... NEW_PW=... conversation-codec passwd chat.log "
        "--password-env OLD_PW --new-password-env NEW_PW",
        [as_json],
    )
    passwd.add_argument("path", metavar="PATH", help="the conversation log file")
    pws = passwd.add_argument_group("passwords (never taken from the command line)")
    pws.add_argument(
        "--password-env", type=env_var_name, metavar="VAR", required=True, help="the current one"
    )
    pws.add_argument(
        "--new-password-env", type=env_var_name, metavar="VAR", required=True, help="the new one"
    )


def add_migrate_command(sub: Sub, as_json: Parser) -> None:
    """Add ``migrate`` to ``sub``."""
    migrate = command(
        sub,
        "migrate",
        _cmd_migrate,
        "convert legacy histories (files, or directories recursively) into logs; "
        "the new logs' key comes from --key-env/--key-file (none: plaintext)",
        "CONVERSATION_KEY=$(cat chat.key) conversation-codec migrate histories/ --out logs/",
        [secret_sources(password=False), legacy_secrets(), as_json],
    )
    migrate.add_argument("paths", metavar="PATH", nargs="+", help="files or directories")
    migrate.add_argument(
        "--password-env",
        "--legacy-password-env",
        dest="legacy_password_env",
        type=env_var_name,
        metavar="VAR",
        help="variable holding the legacy password (its .salt file beside each source)",
    )
    migrate.add_argument("--out", metavar="DIR", help="write logs under DIR; sources untouched")
    migrate.add_argument("--no-backup", action="store_true", help="in place: keep no .bak copy")
    migrate.add_argument("--dry-run", action="store_true", help="read and check; write nothing")


def _cmd_verify(args: argparse.Namespace) -> int:
    worst = EXIT_OK
    for path in args.paths:
        one = argparse.Namespace(**{**vars(args), "path": path})
        try:
            with open_log(one) as codec:
                report = codec.verify()
        except (ConversationCodecError, OSError, ValueError, InputError) as exc:
            worst = max(worst, report_error(exc, one))  # one unreadable log does not stop the rest
            continue
        if args.json:
            emit(report.as_dict())
        else:
            _show_verify(report)
        if not report.ok:
            worst = max(worst, EXIT_CORRUPT)
    return worst


def _show_verify(report: VerifyReport) -> None:
    state = "ok" if report.ok else "DAMAGED"
    count = f"{report.records} intact record{'s' * (report.records != 1)}"
    found = f", {len(report.problems)} problem(s)" if report.problems else ""
    print(f"{report.path}: {state}, {count}{found}")
    for problem in report.problems:
        # index-* offsets are into the .idx file, the others into the log
        where = "index byte" if problem.kind.startswith("index-") else "byte"
        note = "" if problem.is_damage else " (no data lost)"
        print(f"  {where} {problem.offset}: {problem.kind}: {problem.detail}{note}")


def _cmd_salvage(args: argparse.Namespace) -> int:
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
    print(f"lost seqs: {lost}{more}" if lost else "lost seqs: none")
    print(f"{report.source} was only read; check {report.destination}, then replace the log")
    return EXIT_OK


def _show_rewrite(args: argparse.Namespace, what: str, report: CompactionReport) -> int:
    if args.json:
        emit({"path": args.path, **fields(report)})
    else:
        print(
            f"{what} {args.path}: {report.messages} messages kept, "
            f"{report.bytes_before:,} -> {report.bytes_after:,} bytes"
        )
    return EXIT_OK


def _cmd_compact(args: argparse.Namespace) -> int:
    plaintext_needs_plain(args, args.path)
    with open_log(args) as codec:
        report = codec.compact()
    return _show_rewrite(args, "compacted", report)


def _cmd_rekey(args: argparse.Namespace) -> int:
    if args.new_key_file is not None:
        new_key = read_key_file(args.new_key_file)
    else:
        new_key = secret_env(args.new_key_env, "new key").strip()
    with open_log(args) as codec:
        report = codec.rotate_key(new_key)
    _show_rewrite(args, "re-encrypted", report)
    if not args.json:
        print("only the new key opens it now; keep the old key until backups are re-keyed")
    return EXIT_OK


def _cmd_passwd(args: argparse.Namespace) -> int:
    old = secret_env(args.password_env, "current password")
    new = secret_env(args.new_password_env, "new password")
    with open_log(args) as codec:
        report = codec.change_password(old, new)
    return _show_rewrite(args, "changed the password of", report)


def _cmd_migrate(args: argparse.Namespace) -> int:
    from ..maintenance.migrate import migrate_many

    if not args.dry_run:  # a dry run writes nothing, and says whether it would be plaintext
        plaintext_needs_plain(args, "the new logs")
    key = log_key(args)
    legacy_key, legacy_password = legacy_source(args)
    report = migrate_many(
        args.paths,
        out_dir=args.out,
        encryption_key=key,
        legacy_key=legacy_key,
        password=legacy_password,
        backup=not args.no_backup,
        dry_run=args.dry_run,
        progress=progress if sys.stderr.isatty() else None,
        io=args.io,
    )
    if args.json:
        emit({**report.as_dict(), "encrypted": key is not None})
    else:
        _show_batch(args, report, key is not None)
    return EXIT_OK if report.ok else EXIT_ERROR


def _show_batch(args: argparse.Namespace, report: BatchReport, encrypted: bool) -> None:
    rows = [("STATUS", "FILE", "DETAILS")]
    for item in report.items:
        notes = [] if item.report is None else [n for n in item.report.notes if n != item.reason]
        rows.append((item.status, str(item.path), "; ".join([item.reason, *notes])))
    if report.items:
        table(rows)
    dry = " (dry run: nothing was written)" if report.dry_run else ""
    counts = [f"{len(report.converted)} converted", f"{len(report.skipped)} skipped"]
    print(", ".join([*counts, f"{len(report.failed)} failed"]) + dry)
    source = f"--key-file {args.key_file}" if args.key_file else f"${args.key_env}"
    if encrypted:
        print(f"new logs are encrypted with the key from {source}")
    else:
        how = "--plain" if args.plain else f"no key in {source}; a real run needs --plain"
        print(f"new logs are PLAINTEXT ({how})")
