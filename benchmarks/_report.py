"""Render results: markdown tables with ratios to every peer, and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.bench_append_scaling import render as render_scaling

# (key, short name for the summary, title, unit): unit "s" seconds, "B" bytes, "x" ratio.
METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("append_fsync_median", "append fsync", "append, durability=fsync — median", "s"),
    ("append_fsync_p99", "append fsync p99", "append, durability=fsync — p99", "s"),
    ("append_flush_median", "append flush", "append, durability=flush — median", "s"),
    ("append_flush_p99", "append flush p99", "append, durability=flush — p99", "s"),
    (
        "extend_per_msg",
        "extend/msg",
        "extend() in batches of 2,000 (history build) — per message",
        "s",
    ),
    ("open_append_flush", "open+append", "open + first append (flush), one sample", "s"),
    ("load_per_msg", "load()/msg", "load() — per message, best of runs", "s"),
    ("tail20", "tail(20)", "tail(20), best of runs", "s"),
    ("get_random", "get(i)", "get(i), random i — median", "s"),
    ("between", "date range", "date-range query covering 1% of the history, best of runs", "s"),
    ("between_fixed", "range of 20", "date-range query for 20 messages, best of runs", "s"),
    ("search", "search", "keyword search (streaming where the API allows), best of runs", "s"),
    ("bytes_ratio", "disk/plain", "bytes on disk ÷ bytes of plaintext message JSON", "x"),
    ("load_peak_mem", "load() mem", "peak memory of load() (tracemalloc)", "B"),
    ("search_peak_mem", "search mem", "peak memory of the keyword search (tracemalloc)", "B"),
)
_BY_KEY = {m[0]: m for m in METRICS}
SUMMARY = (
    "append_fsync_median",
    "append_flush_median",
    "load_per_msg",
    "tail20",
    "get_random",
    "between",
    "search",
    "bytes_ratio",
    "load_peak_mem",
)
SEED_METRICS = (("save_median", "s"), ("save_p99", "s"), ("reopen_load", "s"))


def fmt(value: Any, unit: str) -> str:
    """Format a number with its unit; pass strings ("n/a: …", "capped") through shortened."""
    if isinstance(value, str):
        return value.split(":", 1)[0]
    if value is None:
        return "—"
    if unit == "s":
        for scale, name in ((1, "s"), (1e-3, "ms"), (1e-6, "µs")):
            if value >= scale:
                return f"{value / scale:.3g} {name}"
        return f"{value * 1e9:.3g} ns"
    if unit == "B":
        for scale, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if value >= scale:
                return f"{value / scale:.3g} {name}"
        return f"{value:.0f} B"
    return f"{value:.3g}"


def _cell(value: Any, ref: Any, unit: str, is_ref: bool) -> str:
    text = fmt(value, unit)
    numeric = isinstance(value, int | float) and isinstance(ref, int | float)
    if is_ref or not numeric or not value:
        return text
    r = ref / value
    return f"{text} · {r:,.0f}x" if r >= 10 else f"{text} · {r:.2g}x"


def _table(
    rows: dict[str, dict[str, Any]],
    columns: list[str],
    headers: list[str],
    units: list[str],
    ref: str,
    labels: dict[str, str],
) -> list[str]:
    out = ["| store | " + " | ".join(headers) + " |", "|---|" + "---:|" * len(headers)]
    ref_row = rows.get(ref, {})
    for store, row in rows.items():
        cells = [
            _cell(row.get(c), ref_row.get(c), u, store == ref)
            for c, u in zip(columns, units, strict=True)
        ]
        name = f"**{labels.get(store, store)}**" if store == ref else labels.get(store, store)
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


def _value(cell: dict[str, Any], key: str) -> Any:
    return cell.get(key, cell.get("capped", cell.get("error")))


def markdown(results: dict[str, Any]) -> str:
    """Return the whole markdown report."""
    meta, ref = results["meta"], results["reference"]
    labels = {k: v["label"] for k, v in results["stores"].items()}
    pk = ", ".join(f"{k} {v}" for k, v in meta["packages"].items())
    lines = [
        "# conversation-codec benchmarks" + (" (--quick)" if results["config"]["quick"] else ""),
        "",
        f"- commit: `{meta['commit']}` — date: {meta['date']}",
        f"- machine: {meta['cpu']}, {meta['cores']} cores, {meta['kernel']}; "
        f"temp dir {meta['tmp_dir']} on {meta['filesystem']}",
        f"- {meta['python']}; {pk}",
        f"- command: `{results['config']['command']}`; wall time {results['wall_s']:.0f} s; "
        f"load average {meta.get('loadavg_start', '?')} at start, "
        f"{meta.get('loadavg_end', '?')} at end (other processes share the CPUs)",
        "",
        f"Cells read `value · rx` where **r = {labels.get(ref, ref)} ÷ this store**, measured "
        "in the same run on the same data: r < 1 means conversation-codec is faster / "
        "smaller / uses less memory than that store. `n/a` = the store has no API for it "
        "(see Stores), `capped` = not built that large.",
        "",
    ]
    for wl, per_store in results["storage"].items():
        sizes = results["workloads"][wl]["sizes"]
        at = str(1000 if 1000 in sizes else sizes[-1])
        lines += [f"## Summary: {wl}, {int(at):,} messages", ""]
        rows = {s: per_store[s].get(at, {}) for s in per_store}
        titles = [_BY_KEY[c][1] for c in SUMMARY]
        units = [_BY_KEY[c][3] for c in SUMMARY]
        lines += [*_table(rows, list(SUMMARY), titles, units, ref, labels), ""]
    for wl, table in results["append_scaling"].items():
        lines += [
            f"## Append scaling ({wl}): append cost at the largest size ÷ at the smallest",
            "",
            render_scaling(table) if table else "(only one size measured)",
            "",
        ]
    if results.get("seed_pattern"):
        lines += [
            "## Seed pattern: `messages = load() or []`; per turn append + save()",
            "",
            "Per-save cost (fsync) at each history size; reopen = new store + load().",
            "",
        ]
        seed = results["seed_pattern"]
        points = sorted({p for by in seed.values() for p in by if p != "error"}, key=int)
        cols = [f"{p}|{m}" for p in points for m, _ in SEED_METRICS]
        rows = {}
        for store, by in seed.items():
            failed = by.get("error", {}).get("error")
            rows[store] = {
                f"{p}|{m}": by.get(p, {}).get(m, failed) for p in points for m, _ in SEED_METRICS
            }
        heads = [f"{m.replace('_', ' ')} @{int(p):,}" for p in points for m, _ in SEED_METRICS]
        units = [u for _ in points for _, u in SEED_METRICS]
        lines += [*_table(rows, cols, heads, units, ref, labels), ""]
    for wl, per_store in results["storage"].items():
        sizes = [str(s) for s in results["workloads"][wl]["sizes"]]
        lines += [f"## Workload: {wl}", "", results["workloads"][wl]["description"], ""]
        for key, _short, title, unit in METRICS:
            rows = {
                s: {z: _value(by.get(z, {}), key) for z in sizes} for s, by in per_store.items()
            }
            lines += [f"### {title}", ""]
            heads = [f"{int(z):,}" for z in sizes]
            lines += [*_table(rows, sizes, heads, [unit] * len(sizes), ref, labels), ""]
    lines += ["## Stores", ""]
    lines += [f"- **{v['label']}** (`{k}`): {v['notes']}" for k, v in results["stores"].items()]
    lines += ["", "## Checks and anomalies", ""]
    lines += results["anomalies"] or ["none"]
    return "\n".join(lines) + "\n"


def plots(results: dict[str, Any], out: Path, stem: str) -> list[Path]:
    """Write append-latency and bytes-on-disk PNGs; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {k: v["label"] for k, v in results["stores"].items()}
    # One colour per store across every panel, so a store missing from one panel (langchain
    # has no fsync mode) does not shift the others' colours.
    colours = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(results["stores"])}
    wls = list(results["storage"])
    written = []
    specs = (
        (
            "append_latency",
            [("append_fsync_median", "fsync"), ("append_flush_median", "flush")],
            "append latency, median (s)",
        ),
        ("bytes_on_disk", [("bytes_ratio", "bytes on disk ÷ plaintext JSON")], "ratio"),
    )
    for name, panels, ylabel in specs:
        fig, axes = plt.subplots(
            len(wls),
            len(panels),
            figsize=(6.5 * len(panels) + 3, 4.2 * len(wls)),
            squeeze=False,
        )
        handles: dict[str, Any] = {}
        for r, wl in enumerate(wls):
            for c, (key, title) in enumerate(panels):
                ax = axes[r][c]
                for store, by in results["storage"][wl].items():
                    pts = sorted(
                        (int(z), v[key]) for z, v in by.items() if isinstance(v.get(key), float)
                    )
                    if pts:
                        style = "-o" if store.startswith("ours") else "--."
                        (line,) = ax.plot(
                            *zip(*pts, strict=True),
                            style,
                            color=colours[store],
                            label=labels.get(store, store),
                        )
                        handles.setdefault(store, line)
                ax.set_xscale("log")
                if key != "bytes_ratio":
                    ax.set_yscale("log")
                ax.set_title(f"{wl}: {title}")
                ax.set_xlabel("history size (messages)")
                ax.set_ylabel(ylabel)
                ax.grid(True, which="both", alpha=0.3)
        fig.legend(
            list(handles.values()),
            [labels.get(s, s) for s in handles],
            loc="center right",
            fontsize=8,
        )
        fig.tight_layout(rect=(0, 0, 1 - 3 / (6.5 * len(panels) + 3), 1))
        path = out / f"{stem}_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
