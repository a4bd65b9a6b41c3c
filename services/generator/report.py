"""Human-readable progress lines and run summaries.

Formatting lives with the generator rather than in the CLI so that the command stays a
thin door and any other caller (a load test, a notebook) prints the same thing.
"""

from __future__ import annotations

from services.generator.runner import GenerateResult, Progress


def format_progress(p: Progress) -> str:
    """One line per report interval, for stderr."""
    target = f" (target {p.target_rate:,.0f})" if p.target_rate is not None else ""
    return (
        f"generate: {p.elapsed_s:6.1f} s  {p.events:>12,} events  "
        f"{p.events_per_s:>10,.0f} events/s{target}  anomalies {p.anomalies:,}  "
        f"delivery errors {p.delivery_errors:,}"
    )


def format_summary(r: GenerateResult) -> str:
    """The end-of-run summary: volume, the anomaly mix, achieved rate, errors."""
    destination = {
        "kafka": f"kafka topics {', '.join(r.topics)}",
        "null": "nowhere (null sink)",
    }.get(r.output.value, f"{r.output.value} file {r.out_path}")
    lines = [
        f"generated {r.events:,} events to {destination}"
        + (" (interrupted)" if r.interrupted else ""),
        f"  seed {r.seed}, event time {r.start_ts_ms} .. {r.last_ts_ms} ms",
        f"  achieved {r.events_per_s:,.0f} events/s over {r.elapsed_s:.2f} s"
        + (f" (target {r.target_rate:,.0f})" if r.target_rate is not None else " (unpaced)"),
        f"  anomalies {r.anomaly_total:,} ({r.anomaly_total / max(r.events, 1):.2%} of events)",
    ]
    lines += [f"    {t.value:<16} {n:>10,}" for t, n in r.anomalies.items()]
    if r.labels_path is not None:
        lines.append(f"  labels written to {r.labels_path}")
    errors = f"  delivery errors {r.delivery_errors:,}"
    if r.first_error:
        errors += f" (first: {r.first_error})"
    lines.append(errors)
    return "\n".join(lines)
