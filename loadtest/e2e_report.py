"""The end-to-end benchmark's outputs: a Markdown table for people, PNG plots over time.

The JSON report is the source; the table and the plots are drawn from it alone, so a saved
report can be re-rendered (`python loadtest/bench_e2e.py --render report.json`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _ms(lat: dict[str, float]) -> str:
    if not lat:
        return "-"
    return f"{lat['p50']:,.0f} / {lat['p99']:,.0f} (max {lat['max']:,.0f})"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def markdown(report: dict[str, Any]) -> str:
    """The figures of a run as Markdown: results, targets, and the processes' resources."""
    target, ev, tp = report["target"], report["events"], report["throughput"]
    lat, det, lag, m = report["latency_ms"], report["detection"], report["lag"], report["machine"]
    alerts = report["alerts"]
    rows = [
        f"### End to end: {target['rate']:,.0f} events/s for {target['seconds']:,.0f} s "
        f"(strategy {target['strategy']}, {target['entities']:,} entities)",
        "",
        "| what | measured |",
        "|---|---|",
        f"| events in (on `events`) / generator reported | {ev['in_topic']:,} / "
        f"{ev['generated_reported']:,} ({tp['achieved_generation_per_s']:,.0f}/s achieved) |",
        f"| feature vectors / dead letters | {ev['features']:,} / {ev['dead_letters']:,} |",
        f"| decisions out (distinct event ids) / records | {ev['decided_distinct']:,} / "
        f"{ev['decision_records']:,} (duplicates {ev['duplicates']:,}, degraded "
        f"{ev['degraded']:,}, unreadable {ev.get('unreadable_messages', 0):,}) |",
        f"| **lost** (events in - distinct decided) | **{ev['lost']:,}**"
        + ("" if tp["drain_complete"] else " (the drain stopped first: not decided in time)")
        + " |",
        f"| sustained events / features / decisions per s (median, t = "
        f"{tp['window_s'][0]:.0f}-{tp['window_s'][1]:.0f} s) | {tp['sustained_events_per_s']:,.0f}"
        f" / {tp['sustained_features_per_s']:,.0f} / {tp['sustained_decisions_per_s']:,.0f} |",
        f"| decisions per s over the whole run (first event to last decision) | "
        f"{tp['overall_decisions_per_s']:,.0f} (drain {tp['drain_s']:.1f} s after the "
        "generator stopped) |",
        f"| event -> feature vector read from `features`, p50 / p99 ms | "
        f"{_ms(lat.get('event_to_features', {}))} |",
        f"| event -> decision (router's `decided_at`), p50 / p99 ms | "
        f"{_ms(lat['event_to_decision'])} |",
        f"| event -> decision visible on `scores`, p50 / p99 ms | "
        f"{_ms(lat['event_to_decision_visible'])} |",
        f"| event -> PagerDuty page at the receiver, p50 / p99 ms | "
        f"{_ms(lat['event_to_alert_page'])} |",
        f"| pages / updates (grouped, 60 s window) / resolves | {alerts['pages']:,} / "
        f"{alerts['updates']:,} / {alerts['resolves']:,} |",
        f"| consumer lag ingest / router, max (final) | {lag['ingest_max']:,} "
        f"({lag['ingest_final']:,}) / {lag['router_max']:,} ({lag['router_final']:,}) |",
        f"| TPR / FPR on injected anomalies ({det['positives']:,} decided positives) | "
        f"{_rate(det['tpr'])} / {_rate(det['fpr'])} |",
        f"| load average before / at load start / after | {_load(m['load_avg_before'])} / "
        f"{_load(m['load_avg_at_start'])} / {_load(m['load_avg_after'])} |",
        f"| CPU of the window ({m['window_s']:.0f} s x {m['cores']} cores = "
        f"{m['window_s'] * m['cores']:.0f} core-s): benchmark processes / others | "
        f"{m['cpu_ours_s']:,.0f} / {m['cpu_others_s']:,.0f} core-s |",
        "",
        "| target | goal | measured | met |",
        "|---|---|---|---|",
    ]
    rows += [
        f"| {t['what']} | {t['goal']} | {t['measured']} | {'yes' if t['met'] else 'no'} |"
        for t in report["targets"]
    ]
    rows += [
        "",
        "| process | CPU s | cores (avg) | peak RSS MB |",
        "|---|---|---|---|",
    ]
    window = max(m["window_s"], 1e-9)
    rows += [
        f"| {name} | {p['cpu_s']:,.1f} | {p['cpu_s'] / window:.2f} | {p['peak_rss_mb']:,.0f} |"
        for name, p in report["processes"].items()
    ]
    return "\n".join(rows)


def _load(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def plots(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """throughput.png (rates and lag over time) and latency.png (p50/p99 over time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = report["series"]
    target = report["target"]
    title = f"{target['rate']:,.0f} events/s target, {target['seconds']:,.0f} s"
    paths = []

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for key, label in (
        ("events_per_s", "events in"),
        ("features_per_s", "feature vectors"),
        ("decisions_per_s", "decisions"),
    ):
        top.plot(series["t"][1:], series[key], label=label)
    top.axhline(target["rate"], color="grey", linestyle="--", linewidth=1, label="target")
    top.set_ylabel("per second")
    top.set_title(f"Throughput ({title})")
    top.legend()
    bottom.plot(series["t"], series["ingest_lag"], label="ingest group (events)")
    bottom.plot(series["t"], series["router_lag"], label="router group (features)")
    bottom.set_ylabel("consumer lag (messages)")
    bottom.set_xlabel("seconds since the load started")
    bottom.legend()
    fig.tight_layout()
    paths.append(out_dir / "throughput.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 4.5))
    for key, label in (("latency_decided", "to decided_at"), ("latency_visible", "to visible")):
        points = series[key]
        ax.plot([p["t"] for p in points], [p["p50"] for p in points], label=f"p50 {label}")
        ax.plot([p["t"] for p in points], [p["p99"] for p in points], label=f"p99 {label}")
    ax.axhline(500, color="grey", linestyle="--", linewidth=1, label="500 ms target")
    ax.set_yscale("log")
    ax.set_ylabel("event -> decision (ms)")
    ax.set_xlabel("seconds since the load started (by read time)")
    ax.set_title(f"Latency ({title})")
    ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "latency.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
