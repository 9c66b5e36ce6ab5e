"""The ``conversation-codec`` command: a thin layer over the library, built on click.

Each command opens a log (or a store root), calls one library method and prints the result.
Library errors become one ``error: ...`` line in :func:`._common.report_error`, the only place
that picks exit codes, by exception class: 0 ok, 1 library or input error (and ``search``:
nothing matched, as grep), 2 usage, 3 damage found (``CorruptRecordError``), 4 a file of the
wrong kind (any other ``FormatError``: not a conversation-codec log). click's own usage errors
are printed by :func:`main` as ``usage:``/``error:`` lines, exit 2.

Secrets never come from argv and are never printed. A key comes from an environment variable
(``--key-env``, default ``CONVERSATION_KEY``) or a private file (``--key-file``, refused when
group or others can read it, as ``keyfile.load_key`` rules); a password from
``--password-env``, ``--password-file`` or ``--password-prompt`` (getpass; twice when it
creates a log); an encrypted legacy source's from its own ``--legacy-*`` options.
``keygen`` is the exception on purpose: it prints a new key so it can be piped into a secret
store. A usage error never repeats the value given (a value typed in the wrong place may be a
secret), and no error prints a key-shaped value, nor a value given as a variable NAME or a
path that does not look like one: ``_redact`` is the one rule, applied to all of stderr
while :func:`main` runs and to the failures of ``--json`` output.

Plaintext is never written by accident: a command that writes a log (``append``, ``import``,
``compact``, ``salvage``, ``migrate``) with no key source needs ``--plain``; without it, it
exits 2 (usage) before anything is read or written. Reading a plaintext log needs no flag
(with the key variable set: a warning on stderr). ``-`` is stdin or stdout everywhere; no
output file is replaced without ``--force``.

Layout: ``_common`` (exit codes, key and password sources, the error mapping, output,
progress), ``_args`` (the command decorator, shared options, value types), and one module per
area: ``keys`` (keygen, demo), ``logs`` (info, cat, tail, append, pop, export, import),
``search``, ``maintenance`` (verify, salvage, compact, rekey, passwd, migrate), ``store``
(ls, copy, delete, prune). Command modules import the library inside the command functions,
so ``--help``, ``--version`` and usage errors import none of it beyond what
``conversation_codec/__init__.py`` does (and click). ``_redact``: what no failure shows.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

import click

from .. import __version__
from .._fsio import DEFAULT_IO, FileIO
from . import keys, logs, maintenance, search, store
from ._common import EXIT_ERROR, EXIT_OK, EXIT_USAGE
from ._redact import redact, redacting

__all__ = ["main"]

_PROG = "conversation-codec"
_EXTRA = re.compile(r"(unexpected extra arguments?) \(.*\)", re.DOTALL)
_HIDDEN = "(value not shown)"


class _Group(click.Group):
    """Commands listed in --help in the order they were added (grouped by area)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(
    _PROG,
    cls=_Group,
    help="Inspect and write append-only (optionally encrypted) conversation logs.",
    epilog="\b\nExample:\n  conversation-codec demo\n"
    "  CONVERSATION_KEY=$(cat chat.key) conversation-codec tail chat.log -n 3",
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, "--version", prog_name=_PROG, message="%(prog)s %(version)s")
def _app() -> None:
    """The command group (each command does the work)."""


for _area in (keys, logs, search, maintenance, store):
    for _command in _area.COMMANDS:
        _app.add_command(_command)


def main(argv: Sequence[str] | None = None, *, io: FileIO = DEFAULT_IO) -> int:
    """Run the command line; return the exit code (the console script exits with it).

    ``io``: the filesystem seam (as ``ConversationCodec(io=...)``) that ``keygen --out``,
    ``migrate`` and the commands on one log write through; tests pass their own.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    with redacting():  # everything on stderr (_redact): no key-shaped value
        return _run(args, io)


def _run(args: list[str], io: FileIO) -> int:
    try:
        code = _app.main(args=args, prog_name=_PROG, standalone_mode=False, obj={"io": io})
    except click.exceptions.NoArgsIsHelpError as exc:
        return _usage_error(exc, "a COMMAND is required", args)
    except click.UsageError as exc:
        return _usage_error(exc, exc.format_message(), args)
    except click.exceptions.Abort:  # Ctrl-C or end of input at a prompt
        return 130
    except click.ClickException as exc:
        print(f"error: {_redact(exc.format_message(), args)}", file=sys.stderr)
        return EXIT_ERROR
    return code if isinstance(code, int) else EXIT_OK


def _usage_error(exc: click.UsageError, message: str, argv: list[str]) -> int:
    ctx = exc.ctx
    usage = ctx.get_usage() if ctx is not None else f"Usage: {_PROG} [OPTIONS] COMMAND [ARGS]..."
    lines = ["usage:" + usage.removeprefix("Usage:")]  # lower case, as the error: lines
    if ctx is not None:
        lines.append(f"Try '{ctx.command_path} --help' for help.")
    lines.append(f"error: {_redact(message, argv)}")
    print("\n".join(lines), file=sys.stderr)
    return EXIT_USAGE


def _redact(message: str, argv: list[str]) -> str:
    """Hide every value the user typed that click's message repeats (it may be a secret)."""
    message = _EXTRA.sub(r"\1 (values not shown)", message)
    for word in argv:
        if word.startswith("--"):
            values = [word.partition("=")[2]]  # --opt=VALUE
        elif word.startswith("-"):
            values = [word[2:]]  # -nVALUE
        else:
            values = [word]
        for value in filter(None, values):
            for quoted in (f"'{value}'", f'"{value}"', f"({value})"):
                message = message.replace(quoted, _HIDDEN)
    return redact(message)
