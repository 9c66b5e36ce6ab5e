"""What the results were measured on: commit, machine, filesystem, Python, package versions."""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from benchmarks._workload import REPO_ROOT

PACKAGES = (
    "conversation-codec",
    "zstandard",
    "cryptography",
    "msgspec",
    "portalocker",
    "openai-agents",
    "langchain-community",
    "langchain-core",
    "matplotlib",
)


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def commit() -> str:
    """Return the HEAD commit, with "+dirty" when the work tree has changes."""
    head = _git("rev-parse", "HEAD") or "no commit yet"
    return head + ("+dirty" if _git("status", "--porcelain") else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def filesystem(path: Path) -> str:
    """Return "fstype (device)" of the mount holding ``path``, from /proc/mounts."""
    best, found = "", "unknown"
    real = str(path.resolve())
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return found
    for line in mounts:
        device, point, fstype = line.split()[:3]
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, found = point, f"{fstype} ({device} on {point})"
    return found


def describe(tmp: Path) -> dict[str, object]:
    """Return the metadata block stored in the JSON and printed atop the markdown."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["sqlite"] = sqlite3.sqlite_version
    return {
        "commit": commit(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "kernel": f"{platform.system()} {platform.release()}",
        "tmp_dir": str(tmp.parent),
        "filesystem": filesystem(tmp),
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "packages": versions,
        "loadavg_start": loadavg(),
    }


def loadavg() -> str:
    """Return the 1-minute load average, e.g. "0.42" ("?" where the OS has none)."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"
