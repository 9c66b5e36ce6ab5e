"""What every command shares: exit codes, key and password sources, errors, output.

:func:`report_error` is the only place that maps an exception to an exit code and an
``error: ...`` line. What it prints, and every other failure said on stderr or in
``--json`` output, goes through the one redaction of ``_redact`` (no key-shaped value, no
misplaced secret).

Library modules are imported inside the functions that need them, so that ``--help`` and
usage errors do not pay for them (see ``cli/__init__.py``).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import re
import stat
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, TextIO

import click

from .._fsio import DEFAULT_IO
from ..errors import (
    BindingError,
    ConversationCodecError,
    CorruptRecordError,
    DecryptionError,
    FormatError,
    KeyMismatchError,
    KeyRequiredError,
    NotEncryptedError,
    PasswordRequiredError,
    UnsupportedVersionError,
)
from ._redact import redact, redact_failures

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar

    from ..codec import ConversationCodec

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CORRUPT, EXIT_WRONG_KIND = 0, 1, 2, 3, 4
Args = SimpleNamespace  # a command's parameters, by name (click's, plus what a command adds)
DEFAULT_KEY_ENV = "CONVERSATION_KEY"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# The library's messages name its Python parameters ("pass legacy_key="); the CLI says its
# options instead. One table, applied to everything the CLI prints from the library.
_PYTHON_WORDS = (
    (re.compile(r"conversation_codec\.migrate\([^)]*\)"), "conversation-codec migrate"),
    (re.compile(r"conversation_codec\.generate_key\(\)"), "conversation-codec keygen"),
    (re.compile(r"\blegacy_key="), "--legacy-key-env/--legacy-key-file"),
    (re.compile(r"\bencryption_key="), "--key-env/--key-file"),
    (re.compile(r"\bcontext="), "--context"),
    (re.compile(r"\bwith_timestamps=True"), "without --no-timestamps"),
    (re.compile(r"\bwith_timestamps=False"), "--no-timestamps"),
)
_PASSWORD_WORD = re.compile(r"\bpassword=")
_STDIN_READER, _STDIN_KEY = "cc.stdin", "cc.stdin_key"  # click meta: who read it, the key
_MAX_SECRET = 4096  # bytes of a key or password on stdin (as in a password file)


class InputError(Exception):
    """Bad input the CLI itself detects (stdin, key source, files); exit 1."""


class UsageError(Exception):
    """Arguments that parse but do not fit together (argparse cannot tell); exit 2."""


# -- keys, passwords, opening ----------------------------------------------------------------


def secret_env(var: str, what: str) -> str:
    """Return the value of the environment variable ``var``, which must hold ``what``."""
    value = os.environ.get(var)
    if value is None:
        raise InputError(f"${var} is not set; it should hold the {what}")
    if not value.strip():
        raise InputError(f"${var} is set but empty; it should hold the {what}")
    return value


def take_stdin(what: str) -> TextIO:
    """Standard input, for ``what``: a second reader in one command (``--key-file -`` and
    messages on stdin) is a usage error rather than a drained pipe."""
    meta = getattr(click.get_current_context(silent=True), "meta", {})
    if meta.setdefault(_STDIN_READER, what) != what:
        raise UsageError(f"{meta[_STDIN_READER]} and {what} cannot both come from stdin (-)")
    if sys.stdin is None:
        raise InputError("stdin is closed; give a file, or pipe the input in")
    return sys.stdin


def _piped_secret(what: str) -> bytes:
    """``what`` read from stdin, which must not be a terminal: a typed secret would show."""
    stdin = take_stdin(what)
    if stdin.isatty():
        raise InputError(f"stdin is a terminal; pipe {what} in (or give a file)")
    data = stdin.read(_MAX_SECRET + 1).encode("utf-8", "surrogateescape")
    if not data.strip() or len(data) > _MAX_SECRET:
        raise InputError(f"stdin must hold {what} alone")
    return data


def read_key_file(path: str) -> str:
    """Return the key held in the file ``path`` (``-``: stdin, read once per command); a bad
    file is bad input (exit 1)."""
    from ..keyfile import load_key, parse_key

    meta = getattr(click.get_current_context(silent=True), "meta", {})
    # The library's rule: a private regular file holding exactly one key (never quoted).
    try:
        if path != "-":
            return load_key(path)
        if _STDIN_KEY not in meta:
            meta[_STDIN_KEY] = parse_key(_piped_secret("the key"), "- (stdin)")
        return str(meta[_STDIN_KEY])
    except FormatError as exc:  # the key file's content: exit 1, not 3 (a damaged log)
        raise InputError(str(exc)) from None


def read_secret_file(path: str, what: str) -> str:
    """Return the password held in the file ``path`` (its first line; ``-``: stdin), by the key
    files' rule: a regular file that group and others cannot access."""
    if path == "-":
        text = _piped_secret(f"the {what}").decode("utf-8", errors="strict").splitlines()[0]
        if not text:
            raise InputError(f"stdin must hold the {what} on its first line")
        return text
    try:
        # O_NONBLOCK: a FIFO planted at the path must not hang the command.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise InputError(f"cannot read {what} file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{what} file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise InputError(
                f"{what} file {path} is readable by others (mode {st.st_mode & 0o777:o}); "
                f"chmod 600 {path}"
            )
        data = file.read(4097)
    text = data.decode("utf-8", errors="strict").splitlines()[0] if data.strip() else ""
    if not text or len(data) > 4096:
        raise InputError(f"{what} file {path} must hold the {what} on its first line")
    return text


def ask_password(what: str, *, twice: bool) -> str:
    """Ask for a password on the terminal (not echoed); ``twice`` when it creates something."""
    import getpass

    try:
        first = getpass.getpass(f"{what[0].upper()}{what[1:]}: ")
        again = getpass.getpass(f"{what[0].upper()}{what[1:]} (again): ") if twice else first
    except EOFError:
        raise InputError(f"no {what} was typed") from None
    if not first:
        raise InputError(f"the {what} is empty")
    if again != first:
        raise InputError(f"the two {what}s typed differ; nothing was done")
    return first


def password_from(args: Args, prefix: str, what: str, *, twice: bool = False) -> str | None:
    """Return the password named by ``--PREFIX-env``, ``--PREFIX-file`` or ``--PREFIX-prompt``
    (whichever of them was given), or None."""
    var = getattr(args, f"{prefix}_env", None)
    file = getattr(args, f"{prefix}_file", None)
    if var is not None:
        return secret_env(var, what)
    if file is not None:
        return read_secret_file(file, what)
    return ask_password(what, twice=twice) if getattr(args, f"{prefix}_prompt", False) else None


def password_given(args: Args) -> bool:
    """Say whether a password source for the log was given."""
    return any(getattr(args, f"password_{how}", None) for how in ("env", "file", "prompt"))


def password_source(args: Args) -> str:
    """Name where the log's password came from, for a message (never the password)."""
    if getattr(args, "password_env", None):
        return f"--password-env {args.password_env}"
    if getattr(args, "password_file", None):
        return f"--password-file {args.password_file}"
    return "--password-prompt"


def log_key(args: Args) -> str | None:
    """Return the key from --key-file or the --key-env variable; None means plaintext."""
    if password_given(args) or getattr(args, "plain", False):
        return None  # a password opens the log, or --plain: the key variable is not consulted
    if getattr(args, "key_file", None) is not None:
        return read_key_file(args.key_file)
    env = getattr(args, "key_env", DEFAULT_KEY_ENV)
    value = os.environ.get(env)
    if value is None:
        return None
    if not value.strip():
        # Rejected rather than treated as unset: writing plaintext by accident is worse.
        raise InputError(f"${env} is set but empty; unset it to use a plaintext log")
    return value.strip()


def plaintext_needs_plain(args: Args, target: str) -> None:
    """Refuse to write ``target`` unencrypted unless ``--plain`` asks for it (exit 2).

    Checked before anything is read or written: an unset or misspelt key variable must
    not silently create, or keep writing, a plaintext log.
    """
    if args.plain or password_given(args):
        return
    if args.key_file is not None or os.environ.get(args.key_env) is not None:
        return
    options = ["--key-env VAR", "--key-file FILE"]
    options += ["--password-env VAR"] if hasattr(args, "password_env") else []
    raise UsageError(
        f"no key: ${args.key_env} is not set. To write {target} encrypted, set it or use "
        f"{', '.join(options[:-1])} or {options[-1]}; to write UNENCRYPTED instead, pass --plain"
    )


def log_password(args: Args, *, creating: bool = False) -> str | None:
    """Return the log's password from its source (asked once: kept on ``args``), or None.

    ``creating``: the log does not exist yet, so a prompt asks twice.
    """
    if getattr(args, "password_value", None) is None:
        args.password_value = password_from(args, "password", "password", twice=creating)
    value: str | None = args.password_value
    return value


def legacy_source(args: Args) -> tuple[str | None, str | None]:
    """Return the (key, password) of an encrypted legacy source, from their options."""
    key: str | None = None
    if args.legacy_key_env is not None:
        key = secret_env(args.legacy_key_env, "legacy key").strip()
    elif args.legacy_key_file is not None:
        key = read_key_file(args.legacy_key_file)
    return key, password_from(args, "legacy_password", "legacy password")


def open_log(args: Args, *, must_exist: bool = True, read_only: bool = False) -> ConversationCodec:
    """Open the log at ``args.path`` with the key, password and context the flags name.

    ``read_only``: the command only reads, so a plaintext log is read even though a key
    variable is set (with a warning on stderr), rather than refused.
    """
    from ..codec import ConversationCodec
    from ..storage.file.store import is_packed

    if must_exist and not os.path.lexists(args.path) and not is_packed(args.path):
        raise InputError(f"{args.path}: no such log")
    key = log_key(args)
    options: dict[str, Any] = {
        "durability": getattr(args, "durability", "fsync"),
        "password": log_password(args, creating=not os.path.lexists(args.path)),
        "context": getattr(args, "context", None),
        "io": getattr(args, "io", DEFAULT_IO),
    }
    try:
        return ConversationCodec(args.path, encryption_key=key, **options)
    except NotEncryptedError:
        # Only a key from the environment: a key file named on the command line is asked for.
        if not read_only or key is None or getattr(args, "key_file", None) is not None:
            raise
    env = getattr(args, "key_env", DEFAULT_KEY_ENV)
    print(
        f"warning: {args.path} is a plaintext log; read without the key in ${env}", file=sys.stderr
    )
    return ConversationCodec(args.path, encryption_key=None, **options)


def unlisted_logs(root: str) -> list[str]:
    """The ``*.log`` files in the directory ``root`` that are no conversation of a store
    there (their names decode to no id, ``store.decode_id``), sorted: a store's listing
    leaves them out, so a command over the root names or opens them by path itself."""
    from ..storage import is_url
    from ..store import decode_id

    if is_url(root):
        return []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []  # the store's own listing reports the root
    return sorted(
        os.path.join(root, e.name)
        for e in entries
        if e.name.endswith(".log") and decode_id(e.name[:-4]) is None and e.is_file()
    )


def report_unlisted(root: str, verb: str) -> bool:
    """Name each of ``unlisted_logs(root)`` on stderr as not ``verb`` (ls, search);
    return whether there was one (the command then exits 1). A log under a hashed name
    (a long id) is left to the store, which reports it itself (``HashedIdError``)."""
    from ..storage.file.store import hashed_digest

    paths = [p for p in unlisted_logs(root) if hashed_digest(os.path.basename(p)[:-4]) is None]
    for path in paths:
        why = "not a conversation of this store (its name encodes no id); give its path"
        print(f"error: {printable(path)}: {why}: not {verb}", file=sys.stderr)
    return bool(paths)


# -- output ----------------------------------------------------------------------------------


def ts(value: datetime | None) -> str | None:
    """Format a UTC time as the plaintext log does: 2026-11-21T05:02:53.123456Z."""
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def short(value: datetime | None) -> str:
    """Format a UTC time to the second for a table or a search hit ("-" for none)."""
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def emit(value: object, *, stored: bool = False) -> None:
    """Print ``value`` as one compact JSON line, its failure fields redacted (``_redact``).

    ``stored``: ``value`` holds stored messages, printed exactly as they are.
    """
    value = value if stored else redact_failures(value)
    sys.stdout.write(json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n")


def fields(report: Any) -> dict[str, Any]:
    """Return a library dataclass as JSON-ready fields (new fields show up by themselves)."""
    return {f.name: _plain(getattr(report, f.name)) for f in dataclasses.fields(report)}


def _plain(value: object) -> object:
    if isinstance(value, datetime):
        return ts(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return fields(value)
    return str(value) if isinstance(value, Path) else value


def printable(text: str) -> str:
    """Escape control characters: stored text must not drive the terminal (ANSI escapes)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", text)


def table(rows: Sequence[tuple[str, ...]], right: frozenset[int] = frozenset()) -> None:
    """Print rows (the first is the heading) as aligned columns."""
    rows = [tuple(printable(cell) for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())


class Progress:
    """A ``click.progressbar`` on stderr fed by a library ``progress(done, total, item)``
    callback (the total is known at the first call); use only when stderr is a terminal."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._bar: ProgressBar[Any] | None = None

    def __call__(self, done: int, total: int, item: object = None) -> None:
        import click

        if self._bar is None:
            self._bar = click.progressbar(
                length=total,
                label=self._label,
                file=sys.stderr,
                show_pos=True,
                item_show_func=lambda name: None if name is None else str(name)[-40:],
            )
        name = getattr(item, "path", None) or item  # a migrate BatchItem: its path
        self._bar.update(done - self._bar.pos, name)
        if done >= total:
            self.close()

    def close(self) -> None:
        """Finish the bar (its last line stays, then a newline)."""
        if self._bar is not None:
            self._bar.render_finish()
            self._bar = None


def progress(label: str, *, quiet: bool = False) -> Progress | None:
    """Return a progress callback drawing on stderr, or None when stderr is no terminal."""
    return Progress(label) if sys.stderr.isatty() and not quiet else None


def run_command(command: Callable[[Args], int], args: Args) -> int:
    """Run one command; map what it raises to a message and an exit code."""
    try:
        code = command(args)
        sys.stdout.flush()
    except BrokenPipeError:  # `cat | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except (ConversationCodecError, OSError, ValueError, InputError, UsageError) as exc:
        return report_error(exc, args)
    return code


def hide_keys(text: str) -> str:
    """``text`` said about a failure: no key-shaped value, nor a secret typed in the wrong
    place (the one redaction, ``_redact.redact``; stderr gets it by itself)."""
    return redact(text)


def speak_cli(message: str, *, legacy: bool = False) -> str:
    """Say a library message in the CLI's words: options, not Python parameters.

    ``legacy``: the message concerns a legacy source, whose password has its own options.
    """
    for pattern, words in _PYTHON_WORDS:
        message = pattern.sub(words, message)
    password = "--legacy-password-env/--legacy-password-file" if legacy else "--password-env"
    return _PASSWORD_WORD.sub(password, message)


# -- errors ----------------------------------------------------------------------------------


def report_error(exc: Exception, args: Args) -> int:
    """Print one ``error:`` line for ``exc`` and return the exit code (the only mapping)."""
    path = getattr(args, "path", None)
    reading = getattr(args, "reading", None)  # import: the source file being read
    password = password_given(args)
    source = f"--key-file {args.key_file}" if getattr(args, "key_file", None) else None
    env = getattr(args, "key_env", DEFAULT_KEY_ENV)
    source = source or (password_source(args) if password else f"${env}")
    code = EXIT_ERROR
    if isinstance(exc, UsageError):
        code, message = EXIT_USAGE, str(exc)
    elif reading is not None and isinstance(exc, (KeyMismatchError, DecryptionError)):
        hint = "--legacy-key-env/--legacy-key-file or --legacy-password-env/--legacy-password-file"
        message = f"{exc}" if isinstance(exc, KeyRequiredError) else f"{exc} (check {hint})"
    elif isinstance(exc, PasswordRequiredError):
        message = f"{path} is protected by a password; name its variable with --password-env VAR"
    elif isinstance(exc, KeyRequiredError) and password:
        message = f"{path} is encrypted with a key, not a password; use --key-env or --key-file"
    elif isinstance(exc, KeyRequiredError):
        message = (
            f"{path} is encrypted and no key was given; put the key in ${env}, "
            "name another variable with --key-env VAR, or use --key-file FILE "
            "(--password-env VAR for a password-protected log)"
        )
    elif isinstance(exc, NotEncryptedError):
        given = "a password" if password else "a key"
        message = (
            f"{path} is a plaintext log but {given} was given ({source}); drop it, or "
            f"encrypt the log in place with: conversation-codec migrate {path}"
        )
    elif isinstance(exc, BindingError):
        message = f"{exc} (a store's log: pass --context with its conversation id)"
    elif isinstance(exc, DecryptionError):
        secret = "password" if password else "key"
        message = f"cannot decrypt {path}: wrong {secret} ({source}), or the header was modified"
    elif isinstance(exc, UnsupportedVersionError):
        message = str(exc)  # newer, not damaged: exit 1 and the library's "upgrade" hint
    elif isinstance(exc, CorruptRecordError):
        code, message = EXIT_CORRUPT, f"log is damaged: {exc}"
    elif isinstance(exc, FormatError):  # not damage: a file of another kind (exit 4)
        code, message = EXIT_WRONG_KIND, str(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        message = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        message = str(exc) or type(exc).__name__
    message = speak_cli(message, legacy=reading is not None)
    # A key given where a path belongs ("tail $KEY") must not come back on the terminal.
    print(f"error: {hide_keys(message)}", file=sys.stderr)
    return code
