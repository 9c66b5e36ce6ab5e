"""Render ``bench_store`` results: the markdown report and its bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TAIL = 20
TARGETS = {"allocated": 0.5, "write": 0.7, "reopen_tail": 0.25}  # issue 15, ours / peer


def _b(n: float) -> str:
    return f"{n / 1024:,.0f} KiB" if n < 1 << 20 else f"{n / (1 << 20):,.1f} MiB"


def _r(q: float | None) -> str:
    return "—" if q is None else f"{q:.2f}"


def render(r: dict[str, Any]) -> str:
    """Return the markdown report."""
    m, f, labels = r["meta"], r["figures"], r["labels"]
    pk = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    lines = [
        f"# Store of many short conversations: {r['conversations']:,} corpus conversations, "
        "written a turn at a time" + (" (--quick)" if r["quick"] else ""),
        "",
        f"- commit: `{m['commit']}` — date: {m['date']}",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['kernel']}; temp dir {m['tmp_dir']} on "
        f"{m['filesystem']}",
        f"- {m['python']}; {pk}",
        f"- command: `{r['command']}`; wall time {r['wall_s']:.0f} s; load average "
        f"{m['loadavg_start']} at start, {m['loadavg_end']} at end (other processes share "
        "the CPUs)",
        "",
        f"{r['turns']:,} turns ({r['messages_per_conversation']:.1f} messages per conversation, "
        f"{r['plaintext_per_conversation']:,.0f} B of plaintext JSON each, "
        f"{_b(r['plaintext_bytes'])} in all), one message per turn, round-robin across "
        "conversations; each turn opens, appends, closes (the kept-open peer excepted). "
        f"Turns of all contestants interleaved; reopen + tail({TAIL}): best of {r['rounds']} "
        "interleaved rounds. The peer's WAL is checkpointed and removed when its last "
        "connection closes, so its figures are the one .db file.",
        "",
        "| contestant | du ÷ plain | apparent ÷ plain | files | writes, total | per turn | "
        f"reopen + tail({TAIL}), total | per conversation |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, c in f.items():
        read = c["reopen_tail_s"]
        read_cells = (
            "— | —"
            if read is None
            else f"{read:.2f} s | {c['reopen_tail_us_per_conversation']:,.0f} µs"
        )
        lines.append(
            f"| {labels[name]} | {c['allocated_ratio']:.2f} ({_b(c['allocated_bytes'])}) | "
            f"{c['apparent_ratio']:.2f} | {c['files']:,} | {c['write_s']:.2f} s | "
            f"{c['write_us_per_turn']:,.0f} µs | {read_cells} |"
        )
        pk = c.get("packed")
        if pk is not None:
            lines.append(
                f"| … after `store.pack()` ({pk['pack_s']:.2f} s) | "
                f"{pk['allocated_ratio']:.2f} ({_b(pk['allocated_bytes'])}) | "
                f"{pk['apparent_bytes'] / r['plaintext_bytes']:.2f} | {pk['files']:,} | — | — | "
                f"{pk['reopen_tail_s']:.2f} s | {pk['reopen_tail_us_per_conversation']:,.0f} µs |"
            )
        beside = c.get("reopen_tail_beside_packed_s")
        if beside is not None:
            lines.append(
                f"| … read in the rounds beside our packed stores | | | | | | {beside:.2f} s | "
                f"{beside / r['conversations'] * 1e6:,.0f} µs |"
            )
    lines += [
        "",
        "Ratios, ours ÷ peer (below 1: ours smaller / faster), against issue 15's targets:",
        "",
        "| pair | du | du, packed | apparent | writes | reopen + tail | reopen + tail, packed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for pair, q in r["ratios"].items():
        lines.append(
            f"| {pair} | {q['allocated']:.2f} | {_r(q.get('allocated_packed'))} | "
            f"{q['apparent']:.2f} | {q['write']:.2f} | {_r(q['reopen_tail'])} | "
            f"{_r(q.get('reopen_tail_packed'))} |"
        )
    lines.append(
        f"| target | ≤ {TARGETS['allocated']} | ≤ {TARGETS['allocated']} | | "
        f"≤ {TARGETS['write']} | ≤ {TARGETS['reopen_tail']} | ≤ {TARGETS['reopen_tail']} |"
    )
    ours = f["ours-fsync"]
    lines += [
        "",
        "Where our bytes are (fsync store; flush is alike): "
        + "; ".join(
            f"`.{s}` {c['files']:,} files, {_b(c['allocated'])} allocated, "
            f"{_b(c['apparent'])} apparent"
            for s, c in ours["by_suffix"].items()
        )
        + f". The `.log` files alone would be {r['ours_logs_only_allocated_ratio_to_peer']:.2f}x "
        "the peer's allocated bytes.",
        "",
        "Reopen + tail rounds (s): "
        + "; ".join(
            f"{labels[n]} " + ", ".join(f"{t:.2f}" for t in c["reopen_tail_rounds_s"])
            for n, c in f.items()
            if c["reopen_tail_rounds_s"]
        )
        + ". Tails checked against the corpus in round 1: "
        + ", ".join(
            f"{n} {c['tail_mismatches']} mismatches"
            for n, c in f.items()
            if c["tail_mismatches"] is not None
        )
        + ".",
        "",
        f"## Profile of our turns (cProfile, {r['profile_conversations']:,} conversations)",
        "",
        "Written again under new ids into the measured store (whose directory then holds "
        f"{3 * r['conversations']:,} files and more), so that what grows with the store costs "
        "what it did in the run. Times under cProfile are inflated by its per-call overhead; "
        "the call counts are exact. Per turn = per operation (for reopen + tail: per "
        "conversation).",
        "",
    ]
    for durability, phases in r["profile"].items():
        for phase, p in phases.items():
            sys_cells = ", ".join(
                f"{n} {c['per_turn']:.2g}x ({c['us_per_turn']:,.0f} µs)"
                for n, c in p["syscalls"].items()
            )
            lines += [
                f"### {durability}, {phase.replace('_', ' ')} ({p['turns']:,} turns, "
                f"{p['us_per_turn_profiled']:,.0f} µs per turn profiled)",
                "",
                f"System calls per turn: {sys_cells}.",
                "",
                "Cumulative µs per turn: "
                + ", ".join(
                    f"`{t['where']}` {t['cumtime_us_per_turn']:,.0f}"
                    for t in p.get("top_cumulative", [])[:14]
                )
                + ".",
                "",
                "| function | calls/turn | own µs/turn | cumulative µs/turn |",
                "|---|---:|---:|---:|",
                *[
                    f"| `{t['where']}` | {t['calls_per_turn']:.3g} | "
                    f"{t['tottime_us_per_turn']:,.0f} | {t['cumtime_us_per_turn']:,.0f} |"
                    for t in p["top_tottime"][:10]
                ],
                "",
            ]
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], path: Path) -> Path:
    """Write three bar panels (du ÷ plaintext, write time, reopen + tail time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = r["figures"]
    names = list(f)
    colours = ["tab:blue" if n.startswith("ours") else "tab:orange" for n in names]
    panels = (
        ("allocated_ratio", "allocated bytes (du) ÷ plaintext JSON"),
        ("write_s", f"{r['turns']:,} turns written, total (s)"),
        ("reopen_tail_s", f"reopen + tail({TAIL}) of each, total (s)"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    for ax, (key, title) in zip(axes, panels, strict=True):
        cells = [(n, f[n][key], colours[names.index(n)]) for n in names if f[n][key] is not None]
        cells += [  # after store.pack() (writes: not a write figure)
            (f"{n}+pack", f[n]["packed"][key], "tab:cyan")
            for n in names
            if "packed" in f[n] and key in f[n]["packed"]
        ]
        shown = [n for n, _v, _c in cells]
        values = [v for _n, v, _c in cells]
        bars = ax.bar(range(len(shown)), values, color=[c for _n, _v, c in cells])
        for bar, value in zip(bars, values, strict=True):
            ax.annotate(
                f"{value:.2f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_xticks(range(len(shown)))
        ax.set_xticklabels([n.replace("-", "\n", 1) for n in shown], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(
        f"{r['conversations']:,} short conversations written a turn at a time "
        "(blue: conversation-codec ConversationStore, cyan: the same after store.pack(), "
        "orange: EncryptedSession over SQLiteSession, one file; peer-open: sessions kept open)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
