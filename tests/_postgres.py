"""A throwaway PostgreSQL cluster for the tests: initdb in a temp dir, a Unix socket only.

``Cluster.start()`` runs ``initdb`` and ``pg_ctl start`` (as the ``postgres`` user when the
tests run as root: PostgreSQL refuses to run as root) with ``listen_addresses=''`` and the
socket in the cluster's own directory under /tmp (a socket path must stay under ~100
bytes, and pytest's temp dirs are private to their owner). ``conftest.py`` makes one per
xdist worker, on first use, and stops it at the end of the session.

The binaries come from ``CC_PG_BIN``, else the PostgreSQL 15 of Debian's packages, else
``initdb`` on the PATH. ``fsync=off``: the crash tests stop the server with ``-m immediate``
(a process crash), after which the WAL written at each commit is still in the page cache;
what fsync protects against, a power loss, is not what these tests model.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg

DEBIAN_BIN = Path("/usr/lib/postgresql/15/bin")


class ClusterUnavailable(Exception):
    """No PostgreSQL server can be started here; the message says why."""


def _bin_dir() -> Path:
    if os.environ.get("CC_PG_BIN"):
        return Path(os.environ["CC_PG_BIN"])
    if (DEBIAN_BIN / "initdb").exists():
        return DEBIAN_BIN
    found = shutil.which("initdb")
    if found is None:
        raise ClusterUnavailable(
            "initdb not found (install PostgreSQL 15: apt-get install postgresql-15, "
            "or set CC_PG_BIN to its bin directory)"
        )
    return Path(found).resolve().parent


class Cluster:
    """One running PostgreSQL server in ``root`` (data in ``root/data``, socket in root)."""

    def __init__(self, root: Path, bin_dir: Path) -> None:
        self.root = root
        self.bin = bin_dir
        self.data = root / "data"
        self.logfile = root / "server.log"

    @classmethod
    def start(cls) -> Cluster:
        bin_dir = _bin_dir()
        root = Path(tempfile.mkdtemp(prefix="ccpg-", dir="/tmp"))
        cluster = cls(root, bin_dir)
        try:
            if os.geteuid() == 0:
                if shutil.which("runuser") is None:
                    raise ClusterUnavailable("running as root, and runuser is missing")
                try:
                    shutil.chown(root, "postgres", "postgres")
                except LookupError:
                    raise ClusterUnavailable("running as root, and no postgres user") from None
            os.chmod(root, 0o755)  # the tests' processes reach the socket inside
            cluster.run("initdb", "-D", str(cluster.data), "-A", "trust", "-U", "postgres",
                        "-E", "UTF8", "--no-sync", "--no-instructions")  # fmt: skip
            cluster.start_server()
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    def run(self, tool: str, *args: str) -> str:
        """Run one of the server's programs (as ``postgres`` when we are root)."""
        argv = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ClusterUnavailable(f"{tool} failed: {exc}") from None
        if done.returncode:
            log = self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""
            raise ClusterUnavailable(f"{tool} failed: {done.stderr.strip()[-2000:]}\n{log}")
        return done.stdout

    def start_server(self) -> None:
        options = f"-c listen_addresses='' -k {self.root} -c fsync=off -c max_connections=200"
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "60",
                 "-o", options, "start")  # fmt: skip

    def stop_server(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql:///{dbname}?host={self.root}&user=postgres"

    def create_database(self, prefix: str = "cc") -> str:
        """Create a fresh database; return its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
        return self.url(name)

    def dump(self, url: str) -> bytes:
        """``pg_dump`` of a database (plain SQL) as bytes."""
        dbname = url.split("///", 1)[1].split("?", 1)[0]
        argv = [str(self.bin / "pg_dump"), "-h", str(self.root), "-U", "postgres", dbname]
        return subprocess.run(argv, capture_output=True, check=True, timeout=120).stdout

    def destroy(self) -> None:
        with contextlib.suppress(ClusterUnavailable):
            if (self.data / "postmaster.pid").exists():
                self.stop_server("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
