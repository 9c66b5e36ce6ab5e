"""Python child processes forked from a zygote: ``Popen`` and ``run`` as in :mod:`subprocess`.

Many tests start ``[sys.executable, "-c", CODE, *args]`` or ``[sys.executable, SCRIPT,
*args]`` to have a writer, a reader or a victim of ``SIGKILL`` in a process of its own. Each
such child cost an interpreter start and the library's imports: ~0.25 s of CPU, ~200 times a
run, about a third of the default run's CPU. Here one interpreter per test process, the
zygote, imports the library once; each child is a ``fork()`` of it that then runs the code
or script as ``python`` would: ``__main__``, ``sys.argv``, ``sys.path[0]``, the environment
and working directory asked for, stdin/stdout/stderr on the pipes or files asked for, and
the interpreter's own exit (atexit, a traceback and status 1 for an uncaught exception, a
broken pipe reported on stderr). The child is a separate process as before: its own
descriptors, locks and memory, killed by signals and reporting its exit status (through the
zygote, its parent); only its interpreter had the imports done already.

``Popen(args, ...)`` and ``run(args, ...)`` take :mod:`subprocess`'s arguments. Any other
command (another program, ``-m``, ``preexec_fn``, ``pass_fds``, ...) goes to :mod:`subprocess`
unchanged, and so does every command when ``CC_TEST_EXEC_CHILDREN=1``: an exec'd interpreter
per child, as before.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

PRELOAD = (  # imported once by the zygote: what the children import
    "conversation_codec",
    "conversation_codec.codec",
    "conversation_codec.store",
    "conversation_codec.maintenance.migrate",
    "conversation_codec.maintenance.compact",
    "conversation_codec.maintenance.verify",
)
_SUPPORTED = {
    "stdin", "stdout", "stderr", "env", "cwd", "text", "universal_newlines", "encoding",
    "errors", "bufsize",
}  # fmt: skip
_MESSAGE = 1 << 20  # bytes: the largest request (code, argv and environment) or reply


def _eligible(args: Any, kwargs: dict[str, Any]) -> bool:
    if os.environ.get("CC_TEST_EXEC_CHILDREN") == "1" or not sys.platform.startswith("linux"):
        return False
    if not isinstance(args, list | tuple) or len(args) < 2 or args[0] != sys.executable:
        return False
    first = str(args[1])
    if first.startswith("-") and first != "-c":
        return False
    return set(kwargs) <= _SUPPORTED and not (first == "-c" and len(args) < 3)


def Popen(args: Sequence[Any], **kwargs: Any) -> Any:
    """``subprocess.Popen(args, **kwargs)``; a zygote's child for a Python command."""
    if _eligible(args, kwargs):
        return Child(list(args), **kwargs)
    return subprocess.Popen(args, **kwargs)


def run(
    args: Sequence[Any],
    *,
    input: str | bytes | None = None,
    capture_output: bool = False,
    timeout: float | None = None,
    check: bool = False,
    **kwargs: Any,
) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run``; a zygote's child for a Python command."""
    if input is not None:
        kwargs["stdin"] = subprocess.PIPE
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    if not _eligible(args, kwargs):
        return subprocess.run(args, input=input, timeout=timeout, check=check, **kwargs)
    with Child(list(args), **kwargs) as proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    code = proc.returncode
    if check and code:
        raise subprocess.CalledProcessError(code, args, out, err)
    return subprocess.CompletedProcess(args, code, out, err)


# -- the requesting side ---------------------------------------------------------------------


class _Zygote:
    """The zygote process of this process, and the replies it sends."""

    def __init__(self) -> None:
        from _writer import subprocess_env  # PYTHONPATH: the package the tests import

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self.proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                env=subprocess_env(None),
            )
        self.sock, self.owner = ours, os.getpid()
        self.exits: dict[int, int] = {}
        self.lock = threading.Lock()

    def spawn(self, argv: list[str], fds: list[int], env: dict[str, str], cwd: str) -> int:
        request = json.dumps({"argv": argv, "env": env, "cwd": cwd}).encode()
        with self.lock:
            socket.send_fds(self.sock, [request], fds)
            while True:
                reply = self._receive()
                if "pid" in reply:
                    return int(reply["pid"])

    def status(self, pid: int, timeout: float | None) -> int | None:
        """``pid``'s wait status once it exited; None if it did not within ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self.lock:
                if pid in self.exits:
                    return self.exits.pop(pid)
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if select.select([self.sock], [], [], 0.05 if left is None else min(left, 0.05))[0]:
                    self._receive()
                    continue
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _receive(self) -> dict[str, Any]:
        data = self.sock.recv(_MESSAGE)
        if not data:
            raise RuntimeError(f"the zygote exited ({self.proc.poll()})")
        reply: dict[str, Any] = json.loads(data)
        if "exit" in reply:
            self.exits[int(reply["exit"])] = int(reply["status"])
        return reply

    def close(self) -> None:
        self.sock.close()  # the zygote sees the end of its requests, and exits
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


_zygote: _Zygote | None = None
_zygote_lock = threading.Lock()


def _the_zygote() -> _Zygote:
    global _zygote
    with _zygote_lock:
        if _zygote is None or _zygote.owner != os.getpid():  # a forked test process: its own
            _zygote = _Zygote()
            if _zygote.owner == os.getpid():
                import atexit

                atexit.register(_zygote.close)
        return _zygote


class Child:
    """A zygote's child, with the part of ``subprocess.Popen``'s interface tests use."""

    def __init__(
        self,
        args: list[Any],
        *,
        stdin: Any = None,
        stdout: Any = None,
        stderr: Any = None,
        env: dict[str, str] | None = None,
        cwd: Any = None,
        text: bool | None = None,
        universal_newlines: bool | None = None,
        encoding: str | None = None,
        errors: str | None = None,
        bufsize: int = -1,
    ) -> None:
        self.args, self.returncode = args, None
        self.text = bool(text or universal_newlines or encoding or errors)
        self._encoding, self._errors = encoding or "utf-8", errors or "strict"
        self.stdin: IO[Any] | None = None
        self.stdout: IO[Any] | None = None
        self.stderr: IO[Any] | None = None
        theirs: list[int] = []  # the child's 0, 1, 2 (ours to close once sent)
        ours: dict[str, int] = {}
        for name, spec in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
            if spec == subprocess.PIPE:
                r, w = os.pipe()
                theirs.append(r if name == "stdin" else w)
                ours[name] = w if name == "stdin" else r
            elif spec == subprocess.STDOUT and name == "stderr":
                theirs.append(os.dup(theirs[1]))
            elif spec == subprocess.DEVNULL:
                theirs.append(os.open(os.devnull, os.O_RDWR))
            elif spec is None:
                theirs.append(os.dup(("stdin", "stdout", "stderr").index(name)))
            else:
                theirs.append(os.dup(spec if isinstance(spec, int) else spec.fileno()))
        try:
            self.pid = _the_zygote().spawn(
                [str(a) for a in args[1:]],
                theirs,
                dict(os.environ if env is None else env),
                os.fspath(cwd) if cwd is not None else os.getcwd(),
            )
        except BaseException:
            for fd in ours.values():
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        for name, fd in ours.items():
            setattr(self, name, self._wrap(fd, "wb" if name == "stdin" else "rb", bufsize))
        self._chunks: dict[int, list[bytes]] = {}
        self._input: memoryview | None = None
        self._communicating = False

    def _wrap(self, fd: int, mode: str, bufsize: int) -> IO[Any]:
        raw: IO[Any] = open(fd, mode, bufsize)  # noqa: SIM115 (closed by the caller or __exit__)
        if not self.text:
            return raw
        return io.TextIOWrapper(
            raw,  # type: ignore[arg-type]
            encoding=self._encoding,
            errors=self._errors,
            write_through=mode == "wb",
            line_buffering=bufsize == 1,
        )

    # -- status and signals

    def poll(self) -> int | None:
        if self.returncode is None:
            status = _the_zygote().status(self.pid, 0)
            if status is not None:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            status = _the_zygote().status(self.pid, timeout)
            if status is None:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    # -- input and output, as subprocess.Popen.communicate

    def communicate(
        self,
        input: str | bytes | None = None,
        timeout: float | None = None,
    ) -> tuple[Any, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            if not self._communicating:
                self._communicating = True
                if self.stdin is not None:
                    with contextlib.suppress(BrokenPipeError):
                        self.stdin.flush()
                    if input:
                        data = input.encode(self._encoding) if isinstance(input, str) else input
                        self._input = memoryview(data)
                    else:
                        self._close(self.stdin)
            if self.stdin is not None and not self.stdin.closed and self._input is not None:
                selector.register(self.stdin.fileno(), selectors.EVENT_WRITE)
            for stream in (self.stdout, self.stderr):
                if stream is not None and not stream.closed:
                    self._chunks.setdefault(stream.fileno(), [])
                    selector.register(stream.fileno(), selectors.EVENT_READ)
            while selector.get_map():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout or 0)
                for key, _ in selector.select(left):
                    self._transfer(selector, key.fd)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        out = self._output(self.stdout)
        err = self._output(self.stderr)
        return out, err

    def _transfer(self, selector: selectors.BaseSelector, fd: int) -> None:
        if self.stdin is not None and not self.stdin.closed and fd == self.stdin.fileno():
            assert self._input is not None
            try:
                sent = os.write(fd, self._input[:65536])
            except BrokenPipeError:
                sent = len(self._input)
            self._input = self._input[sent:]
            if not self._input:
                selector.unregister(fd)
                self._close(self.stdin)
            return
        data = os.read(fd, 65536)
        if data:
            self._chunks[fd].append(data)
        else:
            selector.unregister(fd)

    def _output(self, stream: IO[Any] | None) -> Any:
        if stream is None:
            return None
        data = b"".join(self._chunks.pop(stream.fileno(), [])) if not stream.closed else b""
        self._close(stream)
        if not self.text:
            return data
        text = data.decode(self._encoding, self._errors)
        return text.replace("\r\n", "\n").replace("\r", "\n")

    @staticmethod
    def _close(stream: IO[Any]) -> None:
        with contextlib.suppress(BrokenPipeError):
            stream.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        for stream in (self.stdout, self.stderr, self.stdin):
            if stream is not None and not stream.closed:
                self._close(stream)
        self.wait()


# -- the zygote ------------------------------------------------------------------------------


def _serve(control: int) -> dict[str, Any] | None:
    """Fork a child per request until the requests end; report each child's exit. Returns
    in a child only: its request, to run at the top of the interpreter's stack."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    import gc

    gc.collect()
    gc.freeze()  # the children share these pages until they write to them
    sock = socket.socket(fileno=control)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    while True:
        ready = select.select([sock, wake_r], [], [])[0]
        if wake_r in ready:
            os.read(wake_r, 4096)
        while True:  # every child that exited, reported
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            sock.send(json.dumps({"exit": pid, "status": status}).encode())
        if sock not in ready:
            continue
        data, fds, _, _ = socket.recv_fds(sock, _MESSAGE, 3)
        if not data:
            return None  # the requests ended: the zygote exits (its children run on)
        request: dict[str, Any] = json.loads(data)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.close(sock.detach())
            os.close(wake_r)
            os.close(wake_w)
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            for fd in fds:
                if fd > 2:
                    os.close(fd)
            return request
        for fd in fds:
            os.close(fd)
        sock.send(json.dumps({"pid": pid}).encode())


def _stdio() -> None:
    """New ``sys.stdin``, ``sys.stdout`` and ``sys.stderr`` on descriptors 0, 1 and 2, made
    as the interpreter makes them (the zygote's stay referenced: they would close 0-2)."""
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    _KEEP.extend([sys.stdin, sys.stdout, sys.stderr])

    def writer(fd: int, **options: Any) -> io.TextIOWrapper:
        raw = io.FileIO(fd, "w", closefd=False)
        if unbuffered:
            return io.TextIOWrapper(raw, write_through=True, **options)
        return io.TextIOWrapper(io.BufferedWriter(raw), **options)

    stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), "utf-8")
    sys.stdin = sys.__stdin__ = stdin
    sys.stdout = sys.__stdout__ = writer(1, encoding="utf-8")
    sys.stderr = sys.__stderr__ = writer(
        2, encoding="utf-8", errors="backslashreplace", line_buffering=True
    )


_KEEP: list[Any] = []

if __name__ == "__main__":
    _request = _serve(int(sys.argv[1]))
    if _request is not None:  # a child: run the command as the interpreter's main program
        import builtins
        import runpy
        import types

        os.chdir(_request["cwd"])
        os.environ.clear()
        os.environ.update(_request["env"])
        _stdio()
        _argv: list[str] = _request["argv"]
        del _request
        if _argv[0] == "-c":
            sys.argv = ["-c", *_argv[2:]]
            sys.path[0] = ""
            _main = types.ModuleType("__main__")
            _main.__dict__["__builtins__"] = builtins
            sys.modules["__main__"] = _main
            exec(compile(_argv[1], "<string>", "exec"), _main.__dict__)
        else:
            sys.argv = list(_argv)
            sys.path[0] = os.path.dirname(os.path.abspath(_argv[0]))
            runpy.run_path(_argv[0], run_name="__main__")
