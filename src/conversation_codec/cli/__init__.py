"""The ``conversation-codec`` command: a thin layer over the library.

Each command opens a log (or a store root), calls one library method and prints the result.
Library errors become one ``error: ...`` line in :func:`._common.report_error`, the only place
that picks exit codes: 0 ok, 1 library or input error, 2 usage, 3 corruption found.

Secrets never come from argv and are never printed. A key comes from an environment variable
(``--key-env``, default ``CONVERSATION_KEY``) or a private file (``--key-file``, refused when
group or others can read it, as ``keyfile.load_key`` rules); a password from the variable
named by ``--password-env``. ``keygen`` is the exception on purpose: it prints a new key so
it can be piped into a secret store. A usage error never repeats the value given (a value
typed in the wrong place may be a secret), and no error prints a key-shaped value.

Plaintext is never written by accident: a command that writes a log (``append``, ``import``,
``compact``, ``salvage``, ``migrate``) with no key source (an unset key variable, no
``--key-file``, no ``--password-env``) needs ``--plain``; without it, it exits 2 (usage)
before anything is read or written. Reading a plaintext log needs no flag.

Layout: ``_common`` (exit codes, key and password sources, the error mapping, output),
``_args`` (the argparse parser class, parent parsers, value types), and one module per area:
``keys`` (keygen, demo), ``logs`` (info, cat, tail, append, export, import), ``search``,
``maintenance`` (verify, salvage, compact, rekey, passwd, migrate), ``store`` (ls). Command
modules import the library inside the command functions, so ``--help``, ``--version`` and
usage errors import none of it beyond what ``conversation_codec/__init__.py`` does.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from .. import __version__
from .._fsio import DEFAULT_IO, FileIO
from ..errors import ConversationCodecError
from . import keys, logs, maintenance, search, store
from ._args import Parser, binding, secret_sources
from ._common import EXIT_ERROR, EXIT_USAGE, InputError, UsageError, report_error

__all__ = ["main"]


def main(argv: Sequence[str] | None = None, *, io: FileIO = DEFAULT_IO) -> int:
    """Run the command line; return the exit code (the console script exits with it).

    ``io``: the filesystem seam (as ``ConversationCodec(io=...)``) that ``keygen --out``,
    ``migrate`` and the commands on one log write through; tests pass their own.
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    args.io = io
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        code = run(args)
        sys.stdout.flush()
    except BrokenPipeError:  # `cat | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except (ConversationCodecError, OSError, ValueError, InputError, UsageError) as exc:
        return report_error(exc, args)
    except KeyboardInterrupt:
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = Parser(
        prog="conversation-codec",
        description="Inspect and write append-only (optionally encrypted) conversation logs.",
        epilog="Example:\n  conversation-codec demo\n"
        "  CONVERSATION_KEY=$(cat chat.key) conversation-codec tail chat.log -n 3",
        formatter_class=raw,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # The parents several commands share. The order of the calls below is the order of the
    # commands in --help.
    log = Parser(add_help=False, parents=[secret_sources(password=True), binding()])
    log.add_argument("path", metavar="PATH", help="the conversation log file")
    durable = Parser(add_help=False)
    durable.add_argument(
        "--durability",
        choices=("fsync", "flush"),
        default="fsync",
        help="fsync: survives power loss (default); flush: a crash only",
    )
    as_json = Parser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON (lines) for scripts")
    keys.add_commands(sub, durable)
    logs.add_read_commands(sub, log, durable)
    search.add_commands(sub, as_json)
    maintenance.add_repair_commands(sub, log, as_json)
    maintenance.add_migrate_command(sub, as_json)
    store.add_commands(sub, as_json)
    logs.add_transfer_commands(sub, log, as_json)
    return parser
