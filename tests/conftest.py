"""Shared fixtures: a fixed key, a fixed clock, a seeded random source, and codecs on tmp_path."""

from __future__ import annotations

import contextlib
import errno
import gc
import io
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from _postgres import Cluster, ClusterUnavailable
from conversation_codec import ConversationCodec, FileIO
from conversation_codec.crypto import SCRYPT_MIN_LOG2_N
from conversation_codec.storage.postgres import PostgresBackend

# A fixed Fernet key for tests only (never a real secret).
KEY = "Qa3EwCEJr-ZK8_Wj1Z7pHqHDe7Ubwf2PY1M1hF_zqLk="
OTHER_KEY = "y0XojHGqVqvD6Uw2uH_FU5nTh1DsJiTlwhUyDRyIWCs="
T0 = 1_763_700_000_000_000  # 2025-11-21T04:40:00Z in microseconds

# By-hand fuzzing targets (atheris), run as scripts: not test modules, never imported by pytest.
collect_ignore = ["fuzz"]


def pytest_configure(config: pytest.Config) -> None:
    """Temporary files (``tmp_path``, ``tempfile``) on tmpfs when the machine has one.

    Many tests write real logs and let the library ``fsync`` them; on a disk each sync
    waits for the device, which made the default run wait more than it computed. The
    files are as real on ``/dev/shm`` (the same system calls, locks and renames);
    durability itself is tested through the ``FileIO`` seam and SIGKILLed processes,
    neither of which needs a disk. ``TMPDIR`` set by the caller wins (a disk run:
    ``TMPDIR=/tmp python -m pytest``)."""
    shm = Path("/dev/shm")
    if "TMPDIR" not in os.environ and shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        tempfile.tempdir = str(shm)
    _compile_ahead(config)


def _compile_ahead(config: pytest.Config) -> None:
    """In the xdist controller, before the workers start: compile the package and the tests'
    helper modules once. Every worker imports all of it while collecting, at the same
    moment, and on a fresh checkout each compiled it again (~1 s of CPU each); with the
    bytecode there already this only reads the files' times."""
    if sys.dont_write_bytecode or hasattr(config, "workerinput"):
        return
    if not config.getoption("numprocesses", None):
        return
    import compileall

    import conversation_codec

    compileall.compile_dir(Path(conversation_codec.__file__).parent, quiet=2)
    for helper in sorted(Path(__file__).parent.glob("_*.py")):
        compileall.compile_file(helper, quiet=2)


@pytest.fixture(autouse=True)
def _scrypt_at_its_minimum(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Password logs that tests create derive with scrypt N = 2^10 (``SCRYPT_MIN_LOG2_N``,
    the least that readers accept, FORMAT.md §4.1) instead of 2^15: ~0.1 s less per
    derivation, of which a run makes ~140. The cost is a header field that every reader
    derives with as written, so nothing else differs. Tests marked ``real_scrypt_cost``
    write what users get (one checks the header's cost); processes that tests start do too."""
    if request.node.get_closest_marker("real_scrypt_cost") is None:
        monkeypatch.setattr("conversation_codec.sealing.SCRYPT_LOG2_N", SCRYPT_MIN_LOG2_N)


@pytest.fixture
def key() -> str:
    return KEY


@pytest.fixture
def other_key() -> str:
    return OTHER_KEY


class Clock:
    """A settable clock seam (microseconds since the epoch) that ticks 1 ms per read."""

    def __init__(self, start: int = T0) -> None:
        self.now = start

    def __call__(self) -> int:
        self.now += 1000
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


# The default run is deterministic: Hypothesis draws the same examples every run, with no
# example database carried between runs. Set HYPOTHESIS_PROFILE=explore to search afresh.
settings.register_profile("deterministic", derandomize=True, database=None)
settings.register_profile("explore", database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


def fixed_seed(nodeid: str) -> int:
    """The seed a test uses by default: fixed per test, so every run draws the same."""
    return zlib.crc32(nodeid.encode())


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A seeded random source: ``TEST_SEED`` when set, else a fixed seed per test (never a
    random one: a test that can fail on a lucky draw makes CI flaky). Random exploration
    lives under ``-m slow`` with the seeds it tried printed."""
    seed = int(os.environ.get("TEST_SEED") or fixed_seed(request.node.nodeid))
    request.node.user_properties.append(("seed", seed))
    print(f"random seed: {seed} (rerun with TEST_SEED={seed})")
    return random.Random(seed)


@pytest.fixture(params=["encrypted", "plaintext"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "chat.log"


@pytest.fixture
def make_codec(
    log_path: Path, mode: str, clock: Clock
) -> Iterator[Callable[..., ConversationCodec]]:
    opened: list[ConversationCodec] = []

    def make(**kwargs: object) -> ConversationCodec:
        kwargs.setdefault("encryption_key", KEY if mode == "encrypted" else None)
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("durability", "flush")
        codec = ConversationCodec(kwargs.pop("path", log_path), **kwargs)  # type: ignore[arg-type]
        opened.append(codec)
        return codec

    yield make
    for c in opened:
        c.close()


@pytest.fixture
def codec(make_codec: Callable[..., ConversationCodec]) -> ConversationCodec:
    return make_codec()


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and mtime under ``folder``: to prove nothing was modified."""
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def messages(n: int, start: int = 0) -> list[dict[str, object]]:
    """Realistic OpenAI-style messages, including tool calls and content parts."""
    out: list[dict[str, object]] = []
    for i in range(start, start + n):
        kind = i % 4
        if kind == 0:
            out.append({"role": "user", "content": f"Where is my order #{i}? It was due Tuesday."})
        elif kind == 1:
            out.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": f"call_{i}",
                            "type": "function",
                            "function": {"name": "lookup_order", "arguments": f'{{"id": {i}}}'},
                        }
                    ],
                }
            )
        elif kind == 2:
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": f"call_{i - 1}",
                    "content": '{"status": "shipped"}',
                }
            )
        else:
            out.append(
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": f"Your order #{i} shipped — ünïcode ✓ " * 3}
                    ],
                    "extra": {"score": 0.25, "flags": [True, False, None], "n": -(2**53)},
                }
            )
    return out


def is_sidecar(target: int | str | os.PathLike[str]) -> bool:
    """True for the index and lock files (a descriptor or a path).

    Their writes go through the ``FileIO`` seam too (issue 13); spies and fault injectors
    that model the log file alone pass these calls through untouched, so their counts and
    their models stay the log's. (Linux: a descriptor's name comes from /proc.)
    """
    name = os.readlink(f"/proc/self/fd/{target}") if isinstance(target, int) else target
    return os.fspath(name).endswith((".idx", ".lock"))


class Steps(FileIO):
    """The operating system, plus ``on_step`` called at each step of a write procedure.

    Pass it as ``io=`` and set ``on_step`` (to raise, record or kill) and reset it between
    calls: the public ``FileIO.step`` seam, instead of anything private of the codec.
    """

    def __init__(self, on_step: Callable[[str], None] | None = None) -> None:
        self.on_step: Callable[[str], None] = on_step or (lambda name: None)

    def step(self, name: str) -> None:
        self.on_step(name)


# --- PostgreSQL (issue 14) ------------------------------------------------------------------
#
# One throwaway cluster per xdist worker, started when a test first asks for it (see
# tests/_postgres.py). Without a server the tests skip, saying why; with CC_REQUIRE_POSTGRES=1
# (set by .ci/run) they fail instead, and a skipped test marked ``postgres`` fails the run.

REQUIRE_POSTGRES = os.environ.get("CC_REQUIRE_POSTGRES") == "1"
_skipped_postgres: list[str] = []


# A session that will need the cluster starts it in a thread as soon as its tests are
# collected: initdb and the server's start (~2 s, other processes) overlap the first tests.
_early_cluster: dict[str, Any] = {}


def _start_the_cluster_early(session: pytest.Session) -> None:
    if any("postgres_cluster" in getattr(item, "fixturenames", ()) for item in session.items):

        def start() -> None:
            try:
                _early_cluster["cluster"] = Cluster.start()
            except ClusterUnavailable as exc:
                _early_cluster["error"] = exc

        _early_cluster["thread"] = threading.Thread(target=start, daemon=True)
        _early_cluster["thread"].start()


def _the_early_cluster() -> Cluster | None:
    """The cluster started early, if one was (its error re-raised); None if none was."""
    thread = _early_cluster.pop("thread", None)
    if thread is None:
        return None
    thread.join()
    if "error" in _early_cluster:
        raise _early_cluster.pop("error")
    cluster: Cluster = _early_cluster.pop("cluster")
    return cluster


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    try:
        cluster = _the_early_cluster() or Cluster.start()
    except ClusterUnavailable as exc:
        if REQUIRE_POSTGRES:
            pytest.fail(f"CC_REQUIRE_POSTGRES=1 but no PostgreSQL server starts: {exc}")
        pytest.skip(f"PostgreSQL tests SKIPPED, no server can be started: {exc}")
    yield cluster
    cluster.destroy()


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster: Cluster) -> str:
    """A database of this worker's cluster, shared by its tests (each uses its own ids)."""
    return postgres_cluster.create_database()


@pytest.fixture(scope="session")
def postgres_backend(postgres_url: str) -> Iterator[PostgresBackend]:
    backend = PostgresBackend.shared(postgres_url)
    yield backend
    backend.close()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "postgres" in report.keywords:
        _skipped_postgres.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    with contextlib.suppress(ClusterUnavailable):  # started early, and no test used it
        unused = _the_early_cluster()
        if unused is not None:
            unused.destroy()
    if REQUIRE_POSTGRES and _skipped_postgres and not hasattr(session.config, "workerinput"):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REQUIRE_POSTGRES and _skipped_postgres:
        terminalreporter.write_line(
            f"CC_REQUIRE_POSTGRES=1, yet {len(_skipped_postgres)} PostgreSQL tests were "
            "skipped: the run fails",
            red=True,
        )
        for nodeid in _skipped_postgres[:20]:
            terminalreporter.write_line(f"  {nodeid}")


def in_threads(work: Callable[[int], None], n: int) -> list[BaseException]:
    """Run ``work(0)`` .. ``work(n - 1)`` each in a thread of its own, all at once; return
    what they raised (a failed assert in a thread is reported by the test's own thread)."""
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


SPECIAL_FILES = ["fifo", "socket", "device"]


def make_special(path: Path, kind: str) -> Path:
    """Put a FIFO, a Unix socket or (a link to) the device /dev/null at ``path``."""
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind == "socket":
        cwd = os.getcwd()  # bound by its bare name: tmp paths can pass the 108-byte limit
        os.chdir(path.parent)
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.bind(path.name)
        finally:
            os.chdir(cwd)
    else:
        path.symlink_to(os.devnull)  # a test cannot mknod; a source path is followed
    return path


@contextlib.contextmanager
def unblocked(*fifos: Path, after: float = 10.0) -> Iterator[None]:
    """Run the body; if it blocks opening one of ``fifos`` for reading, open it for writing
    after ``after`` seconds (and again every 0.2 s), so that the reader gets an empty file
    and the test fails (here, at the latest) instead of hanging."""
    done, released = threading.Event(), threading.Event()

    def release() -> None:
        if done.wait(after):
            return
        released.set()
        while not done.wait(0.2):
            for fifo in fifos:
                try:
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                except OSError as exc:  # ENXIO: nobody is reading it
                    if exc.errno != errno.ENXIO:
                        raise

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
    assert not released.is_set(), f"blocked on a FIFO for {after} s"


@contextlib.contextmanager
def collecting() -> Iterator[None]:
    """Collect earlier tests' dropped objects (they close their files when collected), then
    freeze what is left (as after the collection, :func:`pytest_collection_finish`): a
    ``gc.collect()`` in the body then looks at the objects made since only. (A full
    collection of a test worker's heap, with the integrations' packages imported, takes
    ~1 s; the frozen objects were alive, so no garbage is missed.)"""
    gc.collect()
    gc.freeze()
    yield


def pytest_collection_finish(session: pytest.Session) -> None:
    """Collect, then freeze what the collection left alive: the imported modules, their
    classes and the collected items (~300,000 objects in a worker) live to the end anyway,
    and each full collection during the run scanned them all again (~40 of them, 0.1-0.3 s
    each: ~10 s of a run). Only garbage made later is ever collected, as before."""
    gc.collect()
    gc.freeze()
    _start_the_cluster_early(session)


CommandLine = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture(params=["in-process", pytest.param("process", marks=pytest.mark.slow)])
def command_line(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> CommandLine:
    """``command_line(*argv, env=, stdin="")``: ``python -m conversation_codec *argv`` with
    exactly the environment ``env`` and ``stdin`` on a pipe; its exit code and output.

    By default ``main(argv)`` runs in this process, ``os.environ`` set to ``env`` for the
    call: the code the command runs, without an interpreter start and its imports per call
    (~0.3 s each). ``-m slow`` runs each call in a process of its own; test_cli.py keeps the
    real-process tests of the entry point (exit status, pipes, terminals) in the default run.
    """
    if request.param == "process":

        def in_a_process(
            *argv: str, env: dict[str, str], stdin: str = ""
        ) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "conversation_codec", *argv],
                input=stdin,
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
                check=False,
            )

        return in_a_process

    from conversation_codec.cli import main

    def in_process(
        *argv: str, env: dict[str, str], stdin: str = ""
    ) -> subprocess.CompletedProcess[str]:
        with monkeypatch.context() as m:
            for name in set(os.environ) - set(env):
                m.delenv(name)
            for name, value in env.items():
                m.setenv(name, value)
            m.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode()), "utf-8"))
            before = capsys.readouterr()  # what the test printed itself stays its own
            code = main(list(argv))
            out, err = capsys.readouterr()
        sys.stdout.write(before.out)
        sys.stderr.write(before.err)
        return subprocess.CompletedProcess(["conversation-codec", *argv], code, out, err)

    return in_process
