"""argparse pieces every command module uses: the parser class, parents, value types.

No value a user typed is ever echoed back by a usage error: it may be a secret typed in the
wrong place. :class:`Parser` hides argparse's own echoes; the value types here never echo.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, NoReturn, TypeAlias

from ._common import DEFAULT_KEY_ENV

__all__ = [
    "Parser",
    "Sub",
    "age",
    "binding",
    "command",
    "env_var_name",
    "legacy_secrets",
    "secret_sources",
    "time_text",
    "whole_number",
]

_AGE = re.compile(r"(\d+)([mhdw])")
_AGE_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'" + r'|"(?:[^"\\]|\\.)*"', re.DOTALL)  # a repr()


class Parser(argparse.ArgumentParser):
    """argparse without abbreviations (``--password X`` must not mean ``--password-env X``)
    and without echoing any argument's value: it may be a secret typed in the wrong place."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            words = message[len(prefix) :].split()
            shown = [
                w.split("=")[0] + "=..." * ("=" in w) if w[:1] == "-" else "..." for w in words
            ]
            message = prefix + " ".join(shown) + " (values not shown)"
        else:
            # argparse quotes a value it echoes (invalid choice: 'X', invalid int value: 'X',
            # ignored explicit argument 'X'); our own type checks never echo one. The choices
            # listed at the end are ours, not the user's, so they stay.
            head, sep, choices = message.rpartition(" (choose from ")
            head, sep, choices = (head, sep, choices) if sep else (message, "", "")
            message = _QUOTED.sub("(value not shown)", head) + sep + choices
        super().error(message)


Sub: TypeAlias = "argparse._SubParsersAction[Parser]"


def command(
    sub: Sub,
    name: str,
    run: Callable[[argparse.Namespace], int],
    summary: str,
    example: str,
    parents: Sequence[Parser] = (),
) -> argparse.ArgumentParser:
    """Add the command ``name``, run by ``run``, with its summary and ``Example:`` block."""
    cmd: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=summary,
        parents=list(parents),
        epilog=f"Example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.set_defaults(run=run)
    return cmd


# -- parent parsers --------------------------------------------------------------------------


def secret_sources(*, password: bool) -> Parser:
    """A parent parser for where a log's key (or, with ``password``, its password) comes from."""
    keys = Parser(add_help=False)
    group = keys.add_argument_group("keys (never taken from the command line)")
    source = group.add_mutually_exclusive_group()
    source.add_argument(
        "--key-env",
        type=env_var_name,
        metavar="VAR",
        default=DEFAULT_KEY_ENV,
        help="environment variable holding the key (default: %(default)s)",
    )
    source.add_argument(
        "--key-file", metavar="FILE", help="read the key from FILE (mode 0600: others no access)"
    )
    source.add_argument(
        "--plain",
        action="store_true",
        help="no key: the log is plaintext; required to create or write one",
    )
    if password:
        source.add_argument(
            "--password-env",
            type=env_var_name,
            metavar="VAR",
            help="environment variable holding the password of a password-protected log",
        )
    return keys


def binding() -> Parser:
    """A parent parser for the context a log is bound to (FORMAT.md §4.2)."""
    bound = Parser(add_help=False)
    bound.add_argument(
        "--context",
        metavar="ID",
        help="the conversation id the log is bound to (a ConversationStore log: its id)",
    )
    return bound


def legacy_secrets() -> Parser:
    """A parent parser for the key variable of an encrypted legacy source."""
    legacy = Parser(add_help=False)
    group = legacy.add_argument_group("an encrypted legacy source (never from the command line)")
    group.add_argument(
        "--legacy-key-env", type=env_var_name, metavar="VAR", help="variable holding its Fernet key"
    )
    return legacy


# -- value types -----------------------------------------------------------------------------
# argparse prints a type's __name__ only when it raises ValueError or TypeError ("argument
# -n: invalid whole_number value: ..."); these raise ArgumentTypeError with their own message.


def env_var_name(text: str) -> str:
    """Accept the name of an environment variable."""
    if not _ENV_NAME.fullmatch(text):  # never echo it: it may be the secret itself
        raise argparse.ArgumentTypeError("expects the NAME of an environment variable")
    return text


def whole_number(text: str) -> int:
    """Accept a whole number >= 0."""
    # isascii: "²".isdigit() holds but int("²") raises. Never echo it: it may be a secret.
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError("expected a whole number >= 0")
    return int(text)


def time_text(text: str) -> str:
    """Accept a time the library's search can parse; keep it as text for the library."""
    from ..search import to_us

    try:
        to_us(text, "time")  # the library's parser decides what a time is
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected an ISO-8601 time such as 2026-10-01 or 2026-10-01T12:00Z"
        ) from None
    return text


def age(text: str) -> timedelta:
    """Accept an age such as 30m, 12h, 7d or 2w."""
    match = _AGE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError("expected an age such as 30m, 12h, 7d or 2w")
    return timedelta(**{_AGE_UNITS[match[2]]: int(match[1])})
