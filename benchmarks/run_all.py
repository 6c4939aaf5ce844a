"""Run every benchmark, print the tables and the budget lines, and save the results.

Runs inprocess.py once per variant, then e2e.py, instructions.py (when
valgrind is installed) and scale.py, each in a fresh process. Prints the machine description and Markdown tables, and
writes ``docs/benchmarks/results.json`` (every number, the configuration
and the machine) and ``docs/benchmarks/ratios.png``. A missed budget is
reported, not an error. The exit code is 1 only when a benchmark failed
to run.

    python benchmarks/run_all.py
    BENCH_QUICK=1 python benchmarks/run_all.py   # smoke sizes, about two minutes

``make bench`` installs the packages and runs this script.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCHMARKS_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS_DIR.parent
DEFAULT_OUTPUT_DIR = REPO_ROOT / "docs" / "benchmarks"

INPROCESS_VARIANTS = ("default", "message_metrics_off", "message_size_histogram", "multiprocess")

# Extra arguments for BENCH_QUICK=1: sizes that only show that every
# benchmark runs. Without it each script runs with its own defaults.
QUICK_ARGUMENTS = {
    "inprocess": ["--rounds", "2", "--messages", "2000", "--connections", "500"],
    "e2e": ["--rounds", "2", "--connections", "8", "--messages", "100", "--warmup-messages", "5", "--timeout", "30"],
    "scale": [
        "--route-connections", "300", "--route-rounds", "2",
        "--servers", "uvicorn", "--open-counts", "20,200", "--open-rounds", "1", "--timeout", "30",
    ],
    "instructions": ["--servers", "uvicorn", "--connections", "2", "--messages", "10,30"],
}  # fmt: skip

# Seconds a benchmark process may run before it is killed and reported as
# failed: several times what it takes with its default sizes.
FULL_TIMEOUTS = {"inprocess": 600, "e2e": 1800, "scale": 1800, "instructions": 3600}
QUICK_TIMEOUTS = {"inprocess": 120, "e2e": 180, "scale": 180, "instructions": 600}
# Seconds a timed-out benchmark gets to stop its servers after SIGTERM.
STOP_TIMEOUT = 60

DISTRIBUTIONS = (
    "channels-ws-metrics",
    "Django",
    "channels",
    "prometheus-client",
    "django-prometheus",
    "daphne",
    "Twisted",
    "autobahn",
    "uvicorn",
    "uvloop",
    "httptools",
    "websockets",
    "wsproto",
    "psutil",
    "matplotlib",
)


# Machine


def read_cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def read_memory_total_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def read_git_state() -> dict[str, Any]:
    def git(*arguments: str) -> str | None:
        try:
            completed = subprocess.run(
                ["git", *arguments], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return completed.stdout.strip()

    status = git("status", "--porcelain")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def describe_machine() -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpus": os.cpu_count(),
        "usable_cpus": usable,
        "cpu_model": read_cpu_model(),
        "memory_total_bytes": read_memory_total_bytes(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "packages": {name: distribution_version(name) for name in DISTRIBUTIONS},
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


# Running the benchmarks


def run_benchmark(script: str, arguments: list[str], timeout: float) -> dict[str, Any]:
    """Run ``benchmarks/<script>.py`` and return the JSON object it prints last.

    Its progress lines on stderr pass straight through. Raises RuntimeError
    when the script fails, times out or prints no JSON.
    """
    command = [sys.executable, str(BENCHMARKS_DIR / f"{script}.py"), *arguments]
    print(f"\n$ {' '.join(command)}", file=sys.stderr, flush=True)
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        stdout, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        # SIGTERM first: e2e.py and scale.py then stop their servers.
        process.terminate()
        try:
            process.communicate(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
        raise RuntimeError(f"{script}.py timed out after {timeout} s and was stopped") from exc
    if process.returncode != 0:
        raise RuntimeError(f"{script}.py exited with code {process.returncode}; its error output is above")

    lines = [line for line in stdout.splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise RuntimeError(
            f"{script}.py printed no JSON object on its last line; its output ends with {stdout[-500:]!r}"
        ) from exc


def run_everything(quick: bool) -> dict[str, Any]:
    timeouts = QUICK_TIMEOUTS if quick else FULL_TIMEOUTS
    errors: dict[str, str] = {}

    def attempt(key: str, script: str, arguments: list[str]) -> dict[str, Any] | None:
        extra = QUICK_ARGUMENTS[script] if quick else []
        try:
            return run_benchmark(script, [*arguments, *extra], timeouts[script])
        except RuntimeError as exc:
            print(f"{key}: {exc}", file=sys.stderr)
            errors[key] = str(exc)
            return None

    inprocess = {}
    for variant in INPROCESS_VARIANTS:
        report = attempt(f"inprocess {variant}", "inprocess", ["--variant", variant])
        if report is not None:
            inprocess[variant] = report
    e2e = attempt("e2e", "e2e", [])
    if shutil.which("valgrind") is None:
        instructions = None
        print("instructions: skipped, valgrind is not installed (Debian package 'valgrind')", file=sys.stderr)
    else:
        instructions = attempt("instructions", "instructions", [])
    scale = attempt("scale", "scale", [])
    return {"inprocess": inprocess, "e2e": e2e, "instructions": instructions, "scale": scale, "errors": errors}


# Budgets


def _get(data: Any, *keys: Any) -> Any:
    for key in keys:
        if not isinstance(data, (dict, list)):
            return None
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return None
    return data


# (id, description, path to the value in the results, limit, path to its
# 95 % interval or None). A budget passes when the value is at most the
# limit. With an interval, it passes only when the whole interval is at most
# the limit, fails when the whole interval is above it, and is inconclusive
# otherwise: the CPU-time ratios vary by several per cent between rounds.
BUDGETS = (
    (
        "inprocess_message_default",
        "In process, per echoed message, default settings: (wrapped - bare) / minimal",
        ("inprocess", "default", "message_ratio"),
        1.3,
        None,
    ),
    (
        "inprocess_connection_default",
        "In process, per connection, default settings: (wrapped - bare) / minimal",
        ("inprocess", "default", "connection_ratio"),
        2.0,
        None,
    ),
    (
        "e2e_uvicorn_app_to_bare",
        "End to end, uvicorn: server CPU per message, app / bare",
        ("e2e", "servers", "uvicorn", "ratios", "app_to_bare"),
        1.03,
        ("e2e", "servers", "uvicorn", "ratio_intervals", "app_to_bare"),
    ),
    (
        "e2e_uvicorn_app_to_peer",
        "End to end, uvicorn: server CPU per message, app / peer",
        ("e2e", "servers", "uvicorn", "ratios", "app_to_peer"),
        1.02,
        ("e2e", "servers", "uvicorn", "ratio_intervals", "app_to_peer"),
    ),
    (
        "e2e_daphne_app_to_peer",
        "End to end, daphne: server CPU per message, app / peer",
        ("e2e", "servers", "daphne", "ratios", "app_to_peer"),
        1.02,
        ("e2e", "servers", "daphne", "ratio_intervals", "app_to_peer"),
    ),
    (
        "instructions_uvicorn_app_to_bare",
        "End to end, uvicorn: server instructions per message, app / bare",
        ("instructions", "servers", "uvicorn", "ratios", "app_to_bare"),
        1.03,
        None,
    ),
    (
        "instructions_uvicorn_app_to_peer",
        "End to end, uvicorn: server instructions per message, app / peer",
        ("instructions", "servers", "uvicorn", "ratios", "app_to_peer"),
        1.02,
        None,
    ),
    (
        "instructions_daphne_app_to_peer",
        "End to end, daphne: server instructions per message, app / peer",
        ("instructions", "servers", "daphne", "ratios", "app_to_peer"),
        1.02,
        None,
    ),
)


def judge(value: float | None, limit: float, interval: list[float] | None) -> str:
    """Return "pass", "FAIL", "inconclusive" or "not measured" for one budget."""
    if value is None:
        return "not measured"
    if interval is None:
        return "pass" if value <= limit else "FAIL"
    low, high = interval
    if high <= limit:
        return "pass"
    if low > limit:
        return "FAIL"
    return "inconclusive"


def judge_budgets(results: dict[str, Any]) -> list[dict[str, Any]]:
    judged = []
    for budget_id, description, path, limit, interval_path in BUDGETS:
        value = _get(results, *path)
        interval = None if interval_path is None else _get(results, *interval_path)
        judged.append(
            {
                "id": budget_id,
                "description": description,
                "value": value,
                "interval": interval,
                "limit": limit,
                "result": judge(value, limit, interval),
            }
        )
    return judged


# Tables


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """Format a Markdown table, so it can be pasted into docs/benchmarks.md."""

    def cell(value: Any) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return f"{value:.2f}"
        return str(value)

    text_rows = [[cell(value) for value in row] for row in rows]
    widths = [max(len(headers[column]), *(len(row[column]) for row in text_rows)) for column in range(len(headers))]
    lines = [
        "| " + " | ".join(header.ljust(width) for header, width in zip(headers, widths)) + " |",
        "|" + "|".join("-" * (width + 2) for width in widths) + "|",
    ]
    lines += ["| " + " | ".join(value.ljust(width) for value, width in zip(row, widths)) + " |" for row in text_rows]
    return "\n".join(lines)


def format_machine(machine: dict[str, Any]) -> str:
    memory = machine.get("memory_total_bytes")
    lines = [
        f"- CPU: {machine['cpu_model']}, {machine['cpus']} CPUs ({machine['usable_cpus']} usable by this process)",
        f"- Memory: {memory / 2**30:.1f} GiB" if memory else "- Memory: unknown",
        f"- OS: {machine['platform']}",
        f"- Python: {machine['python']} ({machine['python_implementation']})",
        "- Packages: "
        + ", ".join(f"{name} {version}" for name, version in machine["packages"].items() if version is not None),
        f"- Load average at start / end: {machine.get('load_average_at_start')} / {machine.get('load_average_at_end')}",
    ]
    return "\n".join(lines)


def format_value(budget: dict[str, Any]) -> str:
    value, interval = budget["value"], budget["interval"]
    if value is None:
        return "n/a"
    digits = 3 if budget["id"].startswith("instructions_") else 2
    text = f"{value:.{digits}f}"
    if interval is not None:
        text += f" ({interval[0]:.{digits}f} to {interval[1]:.{digits}f})"
    return text


def format_report(results: dict[str, Any]) -> str:
    sections = ["## Machine", format_machine(results["machine"])]

    inprocess_rows = []
    for variant in INPROCESS_VARIANTS:
        report = results["inprocess"].get(variant)
        if report is None:
            continue
        inprocess_rows.append(
            [
                variant,
                report["message_bare"], report["message_wrapped"], report["message_minimal"], report["message_ratio"],
                report["connection_bare"], report["connection_wrapped"], report["connection_minimal"],
                report["connection_ratio"],
            ]
        )  # fmt: skip
    if inprocess_rows:
        sections += [
            "## In process (CPU microseconds; ratio = (wrapped - bare) / minimal)",
            format_table(
                [
                    "variant",
                    "message bare", "message wrapped", "message minimal", "message ratio",
                    "connection bare", "connection wrapped", "connection minimal", "connection ratio",
                ],
                inprocess_rows,
            ),
        ]  # fmt: skip

    e2e_servers = _get(results, "e2e", "servers") or {}
    if e2e_servers:
        config = results["e2e"]["config"]
        rows = []
        for kind, server in e2e_servers.items():
            median = server["median_cpu_us_per_message"]
            ratios = server["ratios"]
            rows.append(
                [
                    kind, median["bare"], median["peer"], median["app"],
                    ratios["peer_to_bare"], ratios["app_to_bare"], ratios["app_to_peer"],
                    f"{server['median_messages_per_second']['bare']:.0f}",
                ]
            )  # fmt: skip
        sections += [
            f"## End to end (server CPU microseconds per echoed message, median of {config['rounds']} rounds; "
            f"{config['connections']} connections x {config['messages_per_connection']} messages)",
            format_table(
                ["server", "bare", "peer", "app", "peer / bare", "app / bare", "app / peer", "bare messages/s"],
                rows,
            ),
        ]

    routes = _get(results, "scale", "routes") or []
    if routes:
        sections += [
            "## Scale: routes (in process, CPU microseconds per connection to the last route)",
            format_table(
                [
                    "routes", "bare", "wrapped", "minimal", "wrapped - bare", "ratio",
                    "wrapped, one path", "middleware bytes",
                ],
                [
                    [
                        row["routes"], row["connection_bare_us"], row["connection_wrapped_us"],
                        row["connection_minimal_us"], row["connection_overhead_us"], row["connection_ratio"],
                        row.get("connection_wrapped_one_path_us"), row["middleware_bytes"],
                    ]
                    for row in routes
                ],
            ),  # fmt: skip
        ]

    open_servers = _get(results, "scale", "connections", "servers") or {}
    rows = []
    for kind, by_count in open_servers.items():
        for count in sorted(by_count, key=int):
            row = by_count[count]
            rows.append(
                [
                    kind, count,
                    row["bare"]["median_bytes_per_connection"] / 1024, row["app"]["median_bytes_per_connection"] / 1024,
                    row["app_minus_bare_bytes_per_connection"] / 1024,
                    row["bare"]["median_open_cpu_us_per_connection"], row["app"]["median_open_cpu_us_per_connection"],
                ]
            )  # fmt: skip
    if rows:
        sections += [
            "## Scale: open connections (server RSS KiB per connection; server CPU microseconds per handshake)",
            format_table(
                ["server", "connections", "bare KiB", "app KiB", "app - bare KiB", "bare CPU us", "app CPU us"], rows
            ),
        ]
    for reason in _get(results, "scale", "skipped") or []:
        sections.append(f"Skipped: {reason}")

    instruction_servers = _get(results, "instructions", "servers") or {}
    if instruction_servers:
        config = results["instructions"]["config"]
        rows = []
        for kind, server in instruction_servers.items():
            per_message = {variant: data["instructions_per_message"] for variant, data in server["variants"].items()}
            ratios = server["ratios"]
            rows.append(
                [
                    kind, f"{per_message['bare']:,.0f}", f"{per_message['peer']:,.0f}", f"{per_message['app']:,.0f}",
                    f"{ratios['peer_to_bare']:.3f}", f"{ratios['app_to_bare']:.3f}", f"{ratios['app_to_peer']:.3f}",
                ]
            )  # fmt: skip
        short, long = config["messages"]
        sections += [
            f"## End to end under callgrind (server instructions per echoed message; {config['connections']} "
            f"connections, {long} minus {short} messages each)",
            format_table(["server", "bare", "peer", "app", "peer / bare", "app / bare", "app / peer"], rows),
        ]

    budget_rows = [
        [budget["description"], format_value(budget), f"<= {budget['limit']}", budget["result"]]
        for budget in results["budgets"]
    ]
    sections += ["## Budgets", format_table(["budget", "value (95 % interval)", "limit", "result"], budget_rows)]

    if results["quick"]:
        sections.append("BENCH_QUICK=1: smoke sizes. These numbers only show that every benchmark runs.")
    for key, error in results["errors"].items():
        sections.append(f"Failed: {key}: {error}")
    return "\n\n".join(sections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=DEFAULT_OUTPUT_DIR,
        help="directory for results.json and ratios.png (default: docs/benchmarks)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get("BENCH_QUICK", "") not in ("", "0"),
        help="smoke sizes, as BENCH_QUICK=1 sets",
    )
    arguments = parser.parse_args()

    started_at = datetime.datetime.now(datetime.timezone.utc)
    machine = describe_machine()
    print(format_machine(machine), file=sys.stderr)

    results = {
        "schema": 2,
        "quick": arguments.quick,
        "started_at": started_at.isoformat(timespec="seconds"),
        "machine": machine,
        "git": read_git_state(),
        **run_everything(arguments.quick),
    }
    machine["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results["finished_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    results["budgets"] = judge_budgets(results)

    arguments.output_dir.mkdir(parents=True, exist_ok=True)
    results_path = arguments.output_dir / "results.json"
    results_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    plot_path = arguments.output_dir / "ratios.png"
    plot_error = None
    try:
        from plot import plot_ratios
    except ImportError as exc:
        plot_error = f"{plot_path} not written because matplotlib is missing ({exc}); run make bench to install it"
    else:
        plot_ratios(results, plot_path)

    print()
    print(format_report(results))
    print()
    print(f"Wrote {results_path}")
    print(plot_error or f"Wrote {plot_path}")
    sys.exit(1 if results["errors"] or plot_error else 0)


if __name__ == "__main__":
    main()
