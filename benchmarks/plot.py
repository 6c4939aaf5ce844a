"""Draw the ratios of a benchmark run into one PNG, with the budget lines.

``run_all.py`` calls ``plot_ratios`` after a run. To redraw from a saved
results file:

    python benchmarks/plot.py docs/benchmarks/results.json docs/benchmarks/ratios.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

# No display on CI machines or servers, and the output is a file anyway.
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

INPROCESS_VARIANTS = ("default", "message_metrics_off", "message_size_histogram", "multiprocess")


def _label_bars(axes: Any, bars: Any, top: float | None = None) -> None:
    """Write each bar's value above it, or below ``top`` with an arrow when the bar is cut off there."""
    for bar in bars:
        height = bar.get_height()
        x = bar.get_x() + bar.get_width() / 2
        if top is not None and height > top:
            axes.annotate(f"\u2191 {height:.2f}", (x, top), ha="center", va="top", fontsize=7, color="white")
        else:
            axes.annotate(f"{height:.2f}", (x, height), ha="center", va="bottom", fontsize=7)


def _label_point(axes: Any, x: float, y: float) -> None:
    axes.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7)


def _not_run(axes: Any, title: str) -> None:
    axes.set_title(title)
    axes.text(0.5, 0.5, "not run", ha="center", va="center", transform=axes.transAxes)
    axes.set_xticks([])
    axes.set_yticks([])


def _budget_line(axes: Any, limit: float | None, color: str, label: str) -> None:
    if limit is not None:
        axes.axhline(limit, color=color, linestyle="--", linewidth=1, label=f"{label} {limit}")


def plot_inprocess(axes: Any, inprocess: dict[str, Any], limits: dict[str, float]) -> None:
    title = "In process: (wrapped - bare) / minimal"
    variants = [variant for variant in INPROCESS_VARIANTS if isinstance(inprocess.get(variant), dict)]
    if not variants:
        _not_run(axes, title)
        return

    positions = range(len(variants))
    width = 0.38
    message = [inprocess[variant].get("message_ratio") or 0.0 for variant in variants]
    connection = [inprocess[variant].get("connection_ratio") or 0.0 for variant in variants]
    # With message metrics off the least work per message is nearly zero,
    # so that ratio can be huge. The axis stops where the budget lines stay
    # readable, and the label of a bar cut off there gives its value.
    budgets = [limits.get("inprocess_message_default"), limits.get("inprocess_connection_default")]
    top = 1.6 * max([limit for limit in budgets if limit is not None] + [2.0])
    _label_bars(axes, axes.bar([p - width / 2 for p in positions], message, width, label="per message"), top)
    _label_bars(axes, axes.bar([p + width / 2 for p in positions], connection, width, label="per connection"), top)
    _budget_line(axes, budgets[0], "C0", "message budget")
    _budget_line(axes, budgets[1], "C1", "connection budget")
    axes.set_ylim(0, top)
    axes.set_xticks(list(positions), [variant.replace("_", "\n") for variant in variants], fontsize=8)
    axes.set_ylabel("ratio")
    axes.set_title(title)
    axes.legend(fontsize=7)


def plot_e2e(axes: Any, e2e: dict[str, Any] | None, instructions: dict[str, Any] | None, limits: dict[str, float]) -> None:
    title = "End to end: ratios per echoed message, server CPU time and instructions"
    cpu_servers = (e2e or {}).get("servers") or {}
    instruction_servers = (instructions or {}).get("servers") or {}
    if not cpu_servers and not instruction_servers:
        _not_run(axes, title)
        return

    kinds = [kind for kind in ("uvicorn", "daphne") if kind in cpu_servers or kind in instruction_servers]
    positions = range(len(kinds))
    ratio_keys = (("app / bare", "app_to_bare"), ("app / peer", "app_to_peer"))
    width = 0.2
    values: list[float] = []
    index = 0
    for source, servers, hatch in (("CPU", cpu_servers, None), ("instructions", instruction_servers, "//")):
        for label, key in ratio_keys:
            # A ratio is None when a round was too short to measure, and
            # matplotlib leaves NaN bars out.
            heights = [(servers.get(kind) or {}).get("ratios", {}).get(key) or math.nan for kind in kinds]
            errors = None
            if source == "CPU":
                intervals = [(servers.get(kind) or {}).get("ratio_intervals", {}).get(key) for kind in kinds]
                errors = [
                    [height - interval[0] if interval else 0.0 for height, interval in zip(heights, intervals)],
                    [interval[1] - height if interval else 0.0 for height, interval in zip(heights, intervals)],
                ]
                values += [bound for interval in intervals if interval for bound in interval]
            offset = (index - 1.5) * width
            bars = axes.bar(
                [p + offset for p in positions],
                heights,
                width,
                yerr=errors,
                capsize=3,
                hatch=hatch,
                color=f"C{index % 2 + 1}",
                label=f"{label}, {source}",
            )
            _label_bars(axes, bars)
            values += [height for height in heights if not math.isnan(height)]
            index += 1
    axes.axhline(1.0, color="black", linewidth=0.8)
    bare_limit = limits.get("e2e_uvicorn_app_to_bare")
    peer_limit = limits.get("e2e_uvicorn_app_to_peer")
    _budget_line(axes, bare_limit, "C1", "uvicorn app / bare budget")
    _budget_line(axes, peer_limit, "C2", "app / peer budget")
    axes.set_xticks(list(positions), kinds)

    # Bars start at the bottom of the axis, so the interesting part, a few
    # percent around 1.0, is what the axis shows.
    lowest = min(values + [1.0])
    highest = max(values + [limit for limit in (bare_limit, peer_limit) if limit is not None] + [1.0])
    margin = max(0.02, (highest - lowest) * 0.2)
    axes.set_ylim(lowest - margin, highest + margin)
    axes.set_ylabel("ratio (CPU: median, 95 % interval)")
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=7)


def plot_routes(axes: Any, routes: list[dict[str, Any]] | None, limits: dict[str, float]) -> None:
    title = "Routes: per connection to the last route, (wrapped - bare) / minimal"
    if not routes:
        _not_run(axes, title)
        return

    counts = [row["routes"] for row in routes]
    ratios = [row["connection_ratio"] or 0.0 for row in routes]
    axes.plot(counts, ratios, marker="o", label="a new path every connection")
    for count, ratio in zip(counts, ratios):
        _label_point(axes, count, ratio)
    # Results written before the cache of labels by path lack this series.
    if all(row.get("connection_wrapped_one_path_us") is not None for row in routes):
        cached = [
            (row["connection_wrapped_one_path_us"] - row["connection_bare_us"]) / row["connection_minimal_us"]
            for row in routes
        ]
        axes.plot(counts, cached, marker="s", label="one path, label from the cache")
        for count, ratio in zip(counts, cached):
            _label_point(axes, count, ratio)
    _budget_line(axes, limits.get("inprocess_connection_default"), "C1", "connection budget")
    axes.set_xscale("log")
    axes.set_xticks(counts, [str(count) for count in counts])
    axes.minorticks_off()
    axes.margins(y=0.15)
    axes.set_xlabel("routes in the URLRouter")
    axes.set_ylabel("ratio")
    axes.set_title(title)
    axes.legend(fontsize=7)


def plot_open_connections(axes: Any, connections: dict[str, Any] | None) -> None:
    title = "Open connections: server RSS per connection, app / bare"
    servers = (connections or {}).get("servers") or {}
    if not any(servers.values()):
        _not_run(axes, title)
        return

    all_counts: set[int] = set()
    for kind, by_count in servers.items():
        counts = sorted(int(count) for count in by_count)
        ratios = []
        for count in counts:
            row = by_count[str(count)]
            bare = row["bare"]["median_bytes_per_connection"]
            ratios.append(row["app"]["median_bytes_per_connection"] / bare if bare > 0 else 0.0)
        axes.plot(counts, ratios, marker="o", label=kind)
        for count, ratio in zip(counts, ratios):
            _label_point(axes, count, ratio)
        all_counts.update(counts)
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_xscale("log")
    axes.set_xticks(sorted(all_counts), [str(count) for count in sorted(all_counts)])
    axes.minorticks_off()
    axes.margins(y=0.15)
    axes.set_xlabel("concurrent open connections")
    axes.set_ylabel("ratio")
    axes.set_title(title)
    axes.legend(fontsize=7)


def plot_ratios(results: dict[str, Any], path: Path) -> None:
    """Write a 2 x 2 figure of the run's ratios to ``path`` as PNG.

    Budget lines come from the ``budgets`` entries of ``results``, so a
    saved results file is drawn with the limits it was judged by.
    """
    limits = {budget["id"]: budget["limit"] for budget in results.get("budgets") or []}
    figure, grid = plt.subplots(2, 2, figsize=(12, 8.5))
    plot_inprocess(grid[0][0], results.get("inprocess") or {}, limits)
    plot_e2e(grid[0][1], results.get("e2e"), results.get("instructions"), limits)
    plot_routes(grid[1][0], (results.get("scale") or {}).get("routes"), limits)
    plot_open_connections(grid[1][1], (results.get("scale") or {}).get("connections"))

    machine = results.get("machine") or {}
    quick = " (BENCH_QUICK: smoke sizes, not for comparison)" if results.get("quick") else ""
    figure.suptitle(
        f"channels-ws-metrics benchmarks, {machine.get('cpu_model', 'unknown CPU')}, "
        f"{machine.get('cpus', '?')} CPUs, Python {machine.get('python', '?')}{quick}",
        fontsize=10,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="results.json written by run_all.py")
    parser.add_argument("output", type=Path, help="PNG file to write")
    arguments = parser.parse_args()
    plot_ratios(json.loads(arguments.results.read_text(encoding="utf-8")), arguments.output)


if __name__ == "__main__":
    main()
