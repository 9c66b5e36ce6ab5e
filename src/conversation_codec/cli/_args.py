"""click pieces every command module uses: the command decorator, shared options, value types.

No value a user typed is ever echoed back by a usage error: it may be a secret typed in the
wrong place. The value types here never echo one; ``cli.main`` redacts click's own echoes
(an unexpected extra argument, an unknown command). :func:`command` tells ``_redact`` which
values a command was given as a NAME (metavar ``VAR``) or a path, by their metavar.

A command is a function of one :data:`._common.Args` (its parameters by name), decorated
with :func:`command` above its options::

    @command("tail", "print the last N messages", "conversation-codec tail chat.log -n 3")
    @log_options
    @click.option("-n", type=WHOLE_NUMBER, default=10)
    def _tail(args: Args) -> int: ...
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from .._fsio import DEFAULT_IO
from ._common import DEFAULT_KEY_ENV, Args, run_command
from ._redact import misplaced, redacting

__all__ = [
    "AGE",
    "ENV_NAME",
    "LOG_PATH",
    "TIME",
    "WHOLE_NUMBER",
    "as_json",
    "binding",
    "choice",
    "command",
    "durability",
    "legacy_secrets",
    "log_options",
    "options",
    "password_sources",
    "secret_sources",
]

F = TypeVar("F", bound=Callable[..., Any])

_AGE = re.compile(r"(\d+)([mhdw])")
_AGE_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# What a parameter's metavar says it takes: a variable NAME, or a file or path (_redact).
_NAME_METAVARS = frozenset({"VAR"})
_PATH_METAVARS = frozenset({"FILE", "[FILE]", "PATH", "PATH...", "ROOT", "SRC", "DST", "DIR"})
# The arguments that read stdin when they are "-" (append's FILE, import's SRC): _check_stdin.
_STDIN_ARGUMENTS = frozenset({"source", "src"})
# Options of which a command takes at most one (whichever of them it has).
_EXCLUSIVE: tuple[tuple[str, ...], ...] = (
    (
        "key_env",
        "key_file",
        "plain",
        "password_env",
        "password_file",
        "password_prompt",
    ),
    ("legacy_key_env", "legacy_key_file"),
    ("legacy_password_env", "legacy_password_file"),
    ("password_env", "password_file", "password_prompt"),  # passwd's current password
    ("new_key_env", "new_key_file"),
    ("new_password_env", "new_password_file", "new_password_prompt"),
    ("to_key_env", "to_key_file", "to_plain"),
    ("since", "last"),
    ("merge", "replace"),
    ("before", "older_than"),
)


def command(
    name: str, summary: str, example: str, *, one_of: Sequence[Sequence[str]] = ()
) -> Callable[[Callable[[Args], int]], click.Command]:
    """Make ``run`` the command ``name``, with its summary and ``Example:`` block.

    ``one_of``: groups of options of which one must be given (click has no such group).
    """

    def wrap(run: Callable[[Args], int]) -> click.Command:
        def callback(**params: Any) -> int:
            ctx = click.get_current_context()
            _check_exclusive(ctx, one_of)
            _check_stdin(ctx)
            io = (ctx.find_root().obj or {}).get("io", DEFAULT_IO)  # cli.main(io=...)
            with redacting(_misplaced(ctx)):
                return run_command(run, Args(**params, io=io))

        callback.__click_params__ = getattr(run, "__click_params__", [])  # type: ignore[attr-defined]
        # \b keeps click from re-wrapping the example lines.
        epilog = "\b\nExample:\n  " + example
        return click.command(name, help=summary, short_help=summary, epilog=epilog)(callback)

    return wrap


def _check_exclusive(ctx: click.Context, one_of: Sequence[Sequence[str]]) -> None:
    given = {
        name
        for name in ctx.params
        if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.PROMPT)
    }
    for group in _EXCLUSIVE:
        both = [name for name in group if name in given]
        if len(both) > 1:
            raise click.UsageError(f"{_flag(ctx, both[1])} not allowed with {_flag(ctx, both[0])}")
    for needed in one_of:
        if not given & set(needed):
            names = ", ".join(_flag(ctx, n) for n in needed)
            raise click.UsageError(f"one of {names} is required")


def _check_stdin(ctx: click.Context) -> None:
    """Refuse two parameters that would both read stdin (``-``) before anything reads it:
    the first reader would drain the pipe and the second fail on what is left, or read the
    first one's input (``append LOG --key-file -``: the key taken for the messages). Those
    that read it are every secret file option (``--key-file``, ``--password-file`` and their
    legacy-, new- and to- forms) and the input of ``append`` (FILE, by default) and
    ``import`` (SRC); ``--out -`` writes stdout, and a log path refuses ``-``."""
    readers = [
        param
        for param in ctx.command.params
        if ctx.params.get(param.name or "") == "-"
        and ((param.name or "").endswith("_file") or param.name in _STDIN_ARGUMENTS)
    ]
    if len(readers) > 1:
        first, second = (_shown(ctx, param) for param in readers[:2])
        raise click.UsageError(
            f"{first} and {second} cannot both come from stdin (-): one command reads it "
            "for one thing only; give the other a file"
        )


def _shown(ctx: click.Context, param: click.Parameter) -> str:
    """A parameter as a usage message names it: an option's flag, an argument's metavar."""
    if isinstance(param, click.Argument):
        default = (
            " (default -)"
            if ctx.get_parameter_source(param.name or "") == ParameterSource.DEFAULT
            else ""
        )
        return (param.metavar or param.human_readable_name).strip("[]") + default
    return _flag(ctx, param.name or "")


def _misplaced(ctx: click.Context) -> tuple[str, ...]:
    """The values given to the command's NAME and path parameters (by metavar) that do not
    look like one: no failure shows them (``_redact.misplaced``)."""
    given: dict[str, list[str]] = {"names": [], "paths": []}
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        values = value if isinstance(value, tuple) else (value,)  # nargs=-1: a tuple
        kind = "names" if param.metavar in _NAME_METAVARS else "paths"
        if param.metavar in _NAME_METAVARS | _PATH_METAVARS:
            given[kind] += [v for v in values if isinstance(v, str)]
    return misplaced(given["names"], given["paths"])


def _flag(ctx: click.Context, name: str) -> str:
    param = next(p for p in ctx.command.params if p.name == name)
    return max(param.opts, key=len)


def options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Stack several option decorators into one, in the order given (their --help order)."""

    def apply(function: F) -> F:
        for decorate in reversed(decorators):
            function = decorate(function)
        return function

    return apply


# -- value types -----------------------------------------------------------------------------


class _Checked(click.ParamType):  # type: ignore[type-arg]
    """A value type whose error message never echoes the value: it may be a secret."""

    def __init__(self, name: str, parse: Callable[[str], Any], expected: str) -> None:
        self.name, self._parse, self._expected = name, parse, expected

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):  # a default, already converted
            return value
        try:
            return self._parse(value)
        except ValueError:
            self.fail(self._expected, param, ctx)


def _env_var_name(text: str) -> str:
    if not _ENV_NAME.fullmatch(text):
        raise ValueError(text)
    return text


def _whole_number(text: str) -> int:
    # isascii: "²".isdigit() holds but int("²") raises.
    if not (text.isascii() and text.isdigit()):
        raise ValueError(text)
    return int(text)


def _time_text(text: str) -> str:
    from ..search import to_us

    to_us(text, "time")  # the library's parser decides what a time is (ValueError if not)
    return text  # kept as text for the library


def _age(text: str) -> timedelta:
    match = _AGE.fullmatch(text.strip())
    if match is None:
        raise ValueError(text)
    try:  # commands take it from now: an age before year 1 is no time a datetime can hold
        age = timedelta(**{_AGE_UNITS[match[2]]: int(match[1])})
        datetime.now(timezone.utc) - age
    except OverflowError:
        raise ValueError(text) from None
    return age


ENV_NAME = _Checked("env", _env_var_name, "expects the NAME of an environment variable")
WHOLE_NUMBER = _Checked("count", _whole_number, "expected a whole number >= 0")
TIME = _Checked(
    "time", _time_text, "expected an ISO-8601 time such as 2026-10-01 or 2026-10-01T12:00Z"
)
AGE = _Checked("age", _age, "expected an age such as 30m, 12h, 7d or 2w (since year 1)")


def _log_path(text: str) -> str:
    if text == "-":  # a log is seekable, locked and has sidecars: no stream can be one
        raise ValueError(text)
    return text


LOG_PATH = _Checked("path", _log_path, "- (stdin/stdout) cannot be a log or store: give a path")


def choice(*values: str) -> _Checked:
    """Accept one of ``values`` (click's Choice echoes a wrong value; this does not)."""

    def parse(text: str) -> str:
        if text not in values:
            raise ValueError(text)
        return text

    return _Checked("choice", parse, f"expected one of: {', '.join(values)}")


# -- shared options --------------------------------------------------------------------------


def secret_sources(*, password: bool) -> Callable[[F], F]:
    """Options for where a log's key (or, with ``password``, its password) comes from."""
    found = [
        click.option(
            "--key-env",
            type=ENV_NAME,
            metavar="VAR",
            default=DEFAULT_KEY_ENV,
            show_default=True,
            help="environment variable holding the key (never from the command line)",
        ),
        click.option(
            "--key-file",
            metavar="FILE",
            help="read the key from FILE (mode 0600: others no access)",
        ),
        click.option(
            "--plain",
            is_flag=True,
            help="no key: the log is plaintext; required to create or write one",
        ),
    ]
    if password:
        found += password_sources("password", "the password of a password-protected log")
    return options(*found)


def binding() -> Callable[[F], F]:
    """The context a log is bound to (FORMAT.md §4.2)."""
    return click.option(
        "--context",
        metavar="ID",
        help="the conversation id the log is bound to (a ConversationStore log: its id)",
    )


def password_sources(prefix: str, what: str) -> list[Callable[[F], F]]:
    """``--PREFIX-env VAR``, ``--PREFIX-file FILE`` and ``--PREFIX-prompt`` for ``what``."""
    flag = "--" + prefix.replace("_", "-")
    return [
        click.option(
            f"{flag}-env",
            type=ENV_NAME,
            metavar="VAR",
            help=f"environment variable holding {what}",
        ),
        click.option(f"{flag}-file", metavar="FILE", help=f"read {what} from FILE (mode 0600)"),
        click.option(
            f"{flag}-prompt",
            is_flag=True,
            help=f"type {what} (not echoed; twice when it creates a log)",
        ),
    ]


def legacy_secrets() -> Callable[[F], F]:
    """The key or password of an encrypted legacy source (never the new log's)."""
    return options(
        click.option(
            "--legacy-key-env",
            type=ENV_NAME,
            metavar="VAR",
            help="variable holding the legacy source's Fernet key",
        ),
        click.option(
            "--legacy-key-file", metavar="FILE", help="read the legacy Fernet key from FILE"
        ),
        *password_sources("legacy_password", "the legacy password")[:2],
    )


def durability() -> Callable[[F], F]:
    """How hard a write is made to last."""
    return click.option(
        "--durability",
        type=choice("fsync", "flush"),
        metavar="[fsync|flush]",
        default="fsync",
        help="fsync: survives power loss (default); flush: a crash only",
    )


def as_json(help_text: str = "print JSON (lines) for scripts") -> Callable[[F], F]:
    """``--json``."""
    return click.option("--json", is_flag=True, help=help_text)


def log_options(function: F) -> F:
    """The PATH of one log, its key or password, and its context."""
    return options(
        click.argument("path", metavar="PATH", type=LOG_PATH),
        secret_sources(password=True),
        binding(),
    )(function)
