"""Writing an evaluation: `report.json`, `report.md` and ROC / PR plots (PNG).

Plots use matplotlib's Agg backend (no display; safe in CI and containers). The ROC plot's
FPR axis is logarithmic: every operating point worth having lies below 1% FPR, which a
linear axis squeezes into the first pixel column.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from models.evaluation import EvaluationResult
from models.metrics import FPR_TARGETS, fpr_key


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.{digits}f}"
    return str(value)


def _detector_rows(title: str, entries: dict[str, dict[str, Any]]) -> list[str]:
    keys = [fpr_key(f) for f in FPR_TARGETS]
    lines = [
        f"### {title}",
        "",
        "| detector | ROC-AUC | PR-AUC | " + " | ".join(f"TPR @ FPR≤{k}" for k in keys) + " |",
        "|---|---|---|" + "---|" * len(keys),
    ]
    for name, m in entries.items():
        tprs = [_fmt(m.get("tpr_at_fpr", {}).get(k, {}).get("tpr")) for k in keys]
        lines.append(
            f"| {name} | {_fmt(m.get('roc_auc'))} | {_fmt(m.get('pr_auc'))} | "
            + " | ".join(tprs)
            + " |"
        )
    return [*lines, ""]


def _per_type_rows(title: str, entries: dict[str, dict[str, Any]], key: str) -> list[str]:
    types: list[str] = []
    for m in entries.values():
        for t in m.get("recall_per_type_at_fpr", {}).get(key, {}):
            if t not in types:
                types.append(t)
    lines = [
        f"### {title}",
        "",
        "| detector | " + " | ".join(types) + " |",
        "|---|" + "---|" * len(types),
    ]
    for name, m in entries.items():
        recall = m.get("recall_per_type_at_fpr", {}).get(key, {})
        lines.append(f"| {name} | " + " | ".join(_fmt(recall.get(t)) for t in types) + " |")
    return [*lines, ""]


def _suggested_rows(report: dict[str, Any], baseline_tpr: float) -> list[str]:
    suggested = report["ensemble"].get("suggested")
    if not suggested:
        return []
    weights = ", ".join(f"{k} {v:g}" for k, v in suggested["weights"].items())
    rows = []
    for label, test in (
        ("one threshold", suggested["test"]),
        ("thresholds per type", suggested["test_per_type_thresholds"]),
    ):
        gain = (test["tpr"] or 0.0) - baseline_tpr
        rows.append(
            f"| weighted vote with suggested weights ({weights}) and {label}, chosen on the "
            f"tuning part: test TPR / FPR | {_fmt(test['tpr'])} / {_fmt(test['fpr'], 4)} "
            f"({gain * 100:+.1f} points over the best baseline) |"
        )
    return rows


def suggested_config(suggested: dict[str, Any]) -> str:
    """The suggestion as the `ensemble` section of the platform config (YAML)."""
    import yaml

    section: dict[str, Any] = {
        "strategy": "weighted",
        "weights": suggested["weights"],
        "default_threshold": suggested["default_threshold"],
    }
    if suggested.get("thresholds_per_type"):
        section["thresholds"] = suggested["thresholds_per_type"]
    text: str = yaml.safe_dump({"ensemble": section}, sort_keys=False)
    return text


def _oracle_rows(report: dict[str, Any]) -> list[str]:
    """The generator's upper bound for the test part (generated streams only)."""
    oracle = report.get("oracle")
    if not oracle:
        return []
    spikes = _fmt(oracle["payment_price_spike_recall"])
    return [
        f"| oracle ceiling: TPR any detector could reach ({oracle['note']}; handed over: "
        f"{', '.join(oracle['handed_over'])}) | {_fmt(oracle['tpr'])} (FPR "
        f"{_fmt(oracle['fpr'], 4)}; payment price spikes {spikes}) |"
    ]


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables."""
    comp = report["comparison"]
    key = comp["fpr_key"]
    ens, base = comp["ensemble_at_target"], comp["baseline_at_target"]
    stream = report["stream"]
    lines = [
        "# Evaluation report",
        "",
        f"Held-out stream: {stream['events']:,} events; warm-up "
        f"{stream.get('warmup_events', 0):,}, tuning part {stream['tune_events']:,}, "
        f"test part {stream['test_events']:,} ({report['protocol']['note']}).",
        f"Source: {report.get('source', '')}; runtime {report.get('runtime', 'native')}; "
        "calibration: "
        + (
            "refitted on the tuning part"
            if report["protocol"].get("recalibrated_on_tuning_part")
            else "registered tables"
        )
        + ".",
        "",
        "## Targets",
        "",
        "| figure | value |",
        "|---|---|",
        f"| ensemble ({comp['ensemble_strategy']}) TPR at FPR ≤ {key} (test ROC) | "
        f"{_fmt(ens['tpr'])} (FPR {_fmt(ens['fpr'], 4)}) |",
        f"| ensemble TPR / FPR with the threshold tuned on the tuning part | "
        f"{_fmt(comp['ensemble_tuned_threshold']['tpr'])} / "
        f"{_fmt(comp['ensemble_tuned_threshold']['fpr'], 4)} |",
        f"| best baseline ({comp['best_baseline']}) TPR at FPR ≤ {key} | "
        f"{_fmt(base['tpr'])} (FPR {_fmt(base['fpr'], 4)}) |",
        f"| recall gain over the best baseline | {comp['recall_gain_points'] * 100:+.1f} points "
        f"({_fmt(comp['recall_gain_relative'] * 100, 1)}% relative) |",
        *_suggested_rows(report, base["tpr"]),
        *_oracle_rows(report),
        f"| TPR target ≥ {comp['target_tpr']:.0%} met | {comp['tpr_target_met']} |",
        f"| gain target ≥ {comp['target_gain'] * 100:.0f} points met | {comp['gain_target_met']} |",
        "",
        "## Detectors on the test part",
        "",
    ]
    ensemble_metrics = {
        f"ensemble:{s}": e["metrics"] for s, e in report["ensemble"]["strategies"].items()
    }
    lines += _detector_rows("Models", report["models"])
    lines += _detector_rows("Ensemble strategies", ensemble_metrics)
    lines += _detector_rows("Statistical baselines", report["baselines"])
    everything = {**report["models"], **ensemble_metrics, **report["baselines"]}
    lines += _per_type_rows(f"Recall per anomaly type at FPR ≤ {key}", everything, key)
    lines += [
        "## Ensemble decisions",
        "",
        "| strategy | as configured: TPR | FPR | alerts | tuned threshold | tuned: TPR | FPR |",
        "|---|---|---|---|---|---|---|",
    ]
    for s, e in report["ensemble"]["strategies"].items():
        conf, tuned = e["as_configured"], e["tuned"]
        lines.append(
            f"| {s} | {_fmt(conf['tpr'])} | {_fmt(conf['fpr'], 4)} | {conf['alerts']} | "
            f"{_fmt(tuned['threshold'], 4)} | {_fmt(tuned['tpr'])} | {_fmt(tuned['fpr'], 4)} |"
        )
    lines.append("")
    suggested = report["ensemble"].get("suggested")
    if suggested:
        weights = ", ".join(f"{k} {v:g}" for k, v in suggested["weights"].items())
        lines += ["## Suggested vote (chosen on the tuning part)", ""]
        for label, test in (
            (f"one threshold {suggested['threshold']:.4f}", suggested["test"]),
            ("the thresholds per type below", suggested["test_per_type_thresholds"]),
        ):
            lines += [
                f"Weights {weights} with {label}: test TPR {_fmt(test['tpr'])}, "
                f"FPR {_fmt(test['fpr'], 4)}; recall per type: "
                + ", ".join(f"{k} {_fmt(v)}" for k, v in test["recall_per_type"].items()),
                "",
            ]
        lines += [
            "As the `ensemble` section of the platform config (thresholds rounded up):",
            "",
            "```yaml",
            suggested_config(suggested).rstrip(),
            "```",
            "",
        ]
    adbench = report.get("adbench")
    if adbench is not None:
        lines += ["## ADBench check", ""]
        if "skipped" in adbench:
            lines += [f"Skipped: {adbench['skipped']}", ""]
        else:
            lines += [
                "| data set | rows | features | anomaly rate | IF ROC-AUC | IF PR-AUC | "
                "XGB ROC-AUC | XGB PR-AUC |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for name, r in adbench["datasets"].items():
                lines.append(
                    f"| {name} | {r['rows']:,} | {r['features']} | {r['anomaly_rate']:.3f} | "
                    f"{_fmt(r['isolation_forest']['roc_auc'])} | "
                    f"{_fmt(r['isolation_forest']['pr_auc'])} | "
                    f"{_fmt(r['xgboost']['roc_auc'])} | {_fmt(r['xgboost']['pr_auc'])} |"
                )
            lines.append("")
    return "\n".join(lines)


def _curves(result: EvaluationResult) -> dict[str, np.ndarray[Any, Any]]:
    """The detectors worth plotting: models, the configured ensemble, the baseline that is
    best at the target FPR and the one with the best ROC-AUC."""
    comparison = result.report["comparison"]
    keys = [k for k in result.test_scores if ":" not in k]
    keys.append(f"ensemble:{comparison['ensemble_strategy']}")
    best_at_target = f"baseline:{comparison['best_baseline']}"
    best_auc = max(
        (k for k in result.test_scores if k.startswith("baseline:")),
        key=lambda k: result.report["baselines"][k.split(":", 1)[1]].get("roc_auc", 0.0),
    )
    keys += dict.fromkeys([best_at_target, best_auc])
    return {k: result.test_scores[k] for k in keys}


def write_plots(result: EvaluationResult, folder: Path) -> list[Path]:
    """roc.png and pr.png of the test part."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    y = result.test_labels > 0
    curves = _curves(result)
    paths = []
    fig, ax = plt.subplots(figsize=(7, 5))
    for name, score in curves.items():
        fpr, tpr, _ = roc_curve(y, np.nan_to_num(score, nan=-np.inf))
        ax.plot(np.maximum(fpr, 1e-5), tpr, label=name, lw=1.5)
    target = result.report["comparison"]["target_fpr"]
    ax.axvline(target, color="grey", ls="--", lw=1, label=f"FPR {target:.1%}")
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_xlabel("false-positive rate (log scale)")
    ax.set_ylabel("true-positive rate")
    ax.set_title("ROC, held-out test part")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    paths.append(folder / "roc.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 5))
    for name, score in curves.items():
        precision, recall, _ = precision_recall_curve(y, np.nan_to_num(score, nan=-np.inf))
        ax.plot(recall, precision, label=name, lw=1.5)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision-recall, held-out test part")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    paths.append(folder / "pr.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def write_report(result: EvaluationResult, folder: Path) -> list[Path]:
    """report.json, report.md, roc.png and pr.png in `folder` (created if needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "report.json"
    text = json.dumps(_clean(result.report), indent=2, default=_json_default, allow_nan=False)
    json_path.write_text(text + "\n", encoding="utf-8")
    md_path = folder / "report.md"
    md_path.write_text(markdown(result.report) + "\n", encoding="utf-8")
    return [json_path, md_path, *write_plots(result, folder)]


def _clean(value: Any) -> Any:
    """Infinite or NaN numbers become null: strict JSON has no Infinity or NaN."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float | np.floating) and not math.isfinite(float(value)):
        return None
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
