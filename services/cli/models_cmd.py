"""`anomaly train`, `anomaly evaluate` and `anomaly models ...`: thin doors onto `models`.

Each command parses options, loads the configuration and calls the `models` package; the
only glue here is feeding an in-process generated stream (`services.generator`) into the
feature builder when no data file is given, because `models` itself may not import a
service. Progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final

import typer

from services.cli.errors import UserError, run_guarded
from services.cli.options import ConfigOption, QuietOption
from services.common.config import PlatformConfig, load_config
from services.common.model_names import ModelName

models_app = typer.Typer(
    help="The model registry: list, show and promote versions; score metric series.",
    no_args_is_help=True,
)

StoreOption = Annotated[
    Path | None,
    typer.Option("--store", help="Registry root (default: model_store.path of the config)."),
]

REPO_ROOT = Path(__file__).resolve().parents[2]


def _store(cfg: PlatformConfig, store: Path | None) -> Path:
    return store if store is not None else Path(cfg.model_store.path)


def _model_names(model: str) -> tuple[ModelName, ...]:
    if model == "all":
        return tuple(ModelName)
    try:
        return (ModelName(model),)
    except ValueError:
        choices = ", ".join([*(m.value for m in ModelName), "all"])
        raise UserError(f"--model must be one of {choices}, got {model!r}") from None


def _progress(quiet: bool) -> Any:
    from models.progress import silent, stderr_progress

    return silent if quiet else stderr_progress


def _generated_spec(
    cfg: PlatformConfig,
    seed: int,
    entities: int | None,
    anomaly_rate: float | None,
    event_rate: float | None,
) -> Any:
    """The StreamSpec of a generated training or evaluation stream (config defaults)."""
    from services.generator import GeneratorError, StreamSpec

    gen = cfg.generator
    try:
        return StreamSpec(
            seed=seed,
            entities=gen.entities if entities is None else entities,
            anomaly_rate=gen.anomaly_rate if anomaly_rate is None else anomaly_rate,
            payment_share=gen.payment_share,
            rate=DEFAULT_EVENT_RATE if event_rate is None else event_rate,
        )
    except GeneratorError as exc:
        raise UserError(str(exc)) from None


def _dataset(
    cfg: PlatformConfig,
    data: Path | None,
    labels: Path | None,
    seed: int,
    events: int,
    entities: int | None,
    anomaly_rate: float | None,
    event_rate: float | None,
    progress: Any,
) -> tuple[Any, str]:
    """(LabelledFeatures, description of the source)."""
    from models.dataset import load_dataset

    if data is not None:
        return load_dataset(data, labels, progress), f"file {data}" + (
            f" with labels {labels}" if labels else " (unlabelled)"
        )
    if labels is not None:
        raise UserError("--labels needs --data (generated streams bring their own labels)")
    from models.dataset import generated_features

    spec = _generated_spec(cfg, seed, entities, anomaly_rate, event_rate)
    source = (
        f"generated stream seed={seed} events={events} entities={spec.entities} "
        f"anomaly_rate={spec.anomaly_rate} payment_share={spec.payment_share} "
        f"event_rate={spec.rate:g}/s"
    )
    progress(f"[data] {source}")
    return generated_features(spec, events, progress), source


DEFAULT_EVENT_RATE: Final = 1_000.0
"""Events per second of event time of a generated training or evaluation stream."""

EventRateOption = Annotated[
    float | None,
    typer.Option(
        "--event-rate",
        min=1.0,
        help="Events per second of event time of the generated stream (train: 1,000; "
        "evaluate: the rate the served models were trained at). The "
        "count and rate features scale with it: train and evaluate at the rate you serve "
        "(a model trained at 1,000/s flags ~3x the normal traffic at 50,000/s).",
    ),
]


def _training_event_rate(loaded: Mapping[ModelName, Any]) -> float:
    """The event rate the loaded models were trained at: the evaluation stream's default.

    Why: the count and rate features scale with the event rate, so models trained at
    5,000/s and evaluated on a 1,000/s stream see every entity as unusually quiet; the
    report then blames the models for a set-up mismatch (seen: Transformer ROC-AUC 0.38
    instead of 0.86). Versions trained before the rate was recorded count as 1,000/s.
    """
    from models.metadata import training_events_per_s

    rates: dict[float, list[str]] = {}
    for name, model in loaded.items():
        per_s = training_events_per_s(model.metadata)
        rate = DEFAULT_EVENT_RATE if per_s is None else per_s
        rates.setdefault(rate, []).append(f"{name.value} v{model.version}")
    if len(rates) > 1:
        which = "; ".join(f"{', '.join(v)} at {r:,.0f}/s" for r, v in sorted(rates.items()))
        raise UserError(
            f"the served models were trained at different event rates ({which}): "
            "give --event-rate (the rate you serve), or retrain them at one rate"
        )
    return next(iter(rates))


def _guard_models(body: Any) -> None:
    """run_guarded, with the models package's own errors shown as user errors."""
    from models.errors import ModelsError

    def wrapped() -> None:
        try:
            body()
        except ModelsError as exc:
            raise UserError(str(exc)) from None

    run_guarded(wrapped)


# --------------------------------------------------------------------------- train


def train(
    model: Annotated[
        str, typer.Option("--model", "-m", help="isolation_forest, xgboost, transformer or all.")
    ] = "all",
    events: Annotated[
        int, typer.Option("--events", min=1_000, help="Events to generate (no --data).")
    ] = 500_000,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            help="Seed of the generated stream and of training "
            "(default: generator.seed of the config).",
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Events file (JSONL, Parquet or CSV; see models.dataset).",
            dir_okay=False,
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option("--labels", help="Labels file for --data (event_id,label).", dir_okay=False),
    ] = None,
    entities: Annotated[
        int | None, typer.Option("--entities", help="Entities of the generated stream.")
    ] = None,
    anomaly_rate: Annotated[
        float | None, typer.Option("--anomaly-rate", help="Anomaly rate of the generated stream.")
    ] = None,
    event_rate: EventRateOption = None,
    warmup_events: Annotated[
        int,
        typer.Option(
            "--warmup-events",
            min=0,
            help="Leading events that only warm the window state and sequence history up, "
            "so the models are fitted and calibrated on a mature stream, as a running "
            "deployment's is (generated: made in addition to --events; --data: the file's "
            "first rows).",
        ),
    ] = 0,
    promote: Annotated[
        bool, typer.Option("--promote", help="Promote the new versions once registered.")
    ] = False,
    device: Annotated[
        str | None, typer.Option("--device", help="Torch device (default: cuda if available).")
    ] = None,
    store: StoreOption = None,
    quiet: QuietOption = False,
    config: ConfigOption = None,
) -> None:
    """Train, calibrate, export (ONNX + native) and register models."""

    def _run() -> None:
        import dataclasses

        from models.progress import Stopwatch
        from models.registry import Registry
        from models.training import TrainSettings, train_all

        cfg = load_config(config)
        progress = _progress(quiet)
        names = _model_names(model)
        run_seed = cfg.generator.seed if seed is None else seed
        clock = Stopwatch()
        generated = warmup_events + events if data is None else events
        dataset, source = _dataset(
            cfg, data, labels, run_seed, generated, entities, anomaly_rate, event_rate, progress
        )
        progress(f"[data] {len(dataset):,} events ready in {clock.seconds:.1f} s")
        if warmup_events:
            source += f", the first {warmup_events:,} for warm-up only"
        settings = TrainSettings(seed=run_seed, models=names, warmup_events=warmup_events)
        if device is not None:
            settings = dataclasses.replace(
                settings, transformer=dataclasses.replace(settings.transformer, device=device)
            )
        registry = Registry(_store(cfg, store))
        trained = train_all(dataset, settings, registry, progress, source)
        for name, t in trained.items():
            holdout = t.metadata["metrics"]["holdout"]
            tpr = holdout.get("tpr_at_fpr", {}).get("0.3%", {}).get("tpr")
            line = (
                f"{name.value:<17} version {t.version:<4} fit {t.metadata['fit_seconds']:>7.1f} s"
            )
            if "roc_auc" in holdout:
                line += f"  hold-out ROC-AUC {holdout['roc_auc']:.4f}  TPR@0.3% {tpr:.3f}"
            typer.echo(line)
            if promote and t.version is not None:
                registry.promote(name, t.version)
                typer.echo(f"{name.value:<17} promoted version {t.version}")
        typer.echo(f"total {clock.seconds:.1f} s (features included) for {len(dataset):,} events")

    _guard_models(_run)


# --------------------------------------------------------------------------- evaluate


def evaluate(
    events: Annotated[
        int,
        typer.Option(
            "--events", min=1_000, help="Measured events of the generated held-out stream."
        ),
    ] = 300_000,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            help="Seed of the held-out stream; must differ from the "
            "training seed (default: training seed + 1).",
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Labelled held-out events file instead of a generated one.",
            dir_okay=False,
        ),
    ] = None,
    labels: Annotated[
        Path | None, typer.Option("--labels", help="Labels of --data.", dir_okay=False)
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Output folder (report.json, report.md, *.png).")
    ] = Path("reports/evaluation"),
    runtime: Annotated[
        str, typer.Option("--runtime", help="native or onnx: which artifacts score.")
    ] = "native",
    tune_fraction: Annotated[
        float,
        typer.Option(
            "--tune-fraction",
            help="Leading share of the stream used for warm-up, baselines and threshold tuning.",
        ),
    ] = 0.5,
    warmup_events: Annotated[
        int | None,
        typer.Option(
            "--warmup-events",
            help="Leading events of the generated stream that only warm the window state "
            "up (default: as many as preceded the models' hold-out part in training, "
            "warm-up and fit part, so the test part has the stream age the calibration was "
            "made at; 0 for --data).",
        ),
    ] = None,
    target_fpr: Annotated[
        float, typer.Option("--target-fpr", help="FPR bound of the headline figures.")
    ] = 0.003,
    recalibrate: Annotated[
        bool,
        typer.Option(
            "--recalibrate",
            help="Refit calibration tables on the tuning part (as a deployment would on its "
            "own traffic) instead of using the registered ones.",
        ),
    ] = False,
    adbench: Annotated[
        Path | None,
        typer.Option(
            "--adbench",
            help="ADBench folder (default: $ANOMALY_ADBENCH_DIR or <repo>/../shared/data/adbench).",
        ),
    ] = None,
    skip_adbench: Annotated[
        bool, typer.Option("--skip-adbench", help="Do not run the ADBench check.")
    ] = False,
    event_rate: EventRateOption = None,
    store: StoreOption = None,
    quiet: QuietOption = False,
    config: ConfigOption = None,
) -> None:
    """Evaluate the served models, the ensemble and statistical baselines on held-out data."""

    def _run() -> None:
        from models.adbench import default_adbench_dir, run_adbench
        from models.evaluation import EvaluationSettings, evaluate_stream
        from models.metadata import calibration_stream_age
        from models.registry import Registry, Runtime
        from models.report import write_report
        from models.scoring import ModelScorer

        if runtime not in ("native", "onnx"):
            raise UserError(f"--runtime must be native or onnx, got {runtime!r}")
        chosen_runtime: Runtime = "onnx" if runtime == "onnx" else "native"
        cfg = load_config(config)
        progress = _progress(quiet)
        registry = Registry(_store(cfg, store))
        loaded = {}
        for name in ModelName:
            flag = cfg.flags.models.get(name)
            if flag is not None and not flag.enabled:
                continue
            loaded[name] = registry.load(name, flags=cfg.flags)
        if not loaded:
            raise UserError("every model is disabled in flags.models")
        train_seeds = {int(m.metadata["seed"]) for m in loaded.values()}
        eval_seed = seed if seed is not None else max(train_seeds) + 1
        if data is None and eval_seed in train_seeds:
            raise UserError(
                f"--seed {eval_seed} is a training seed: evaluate on a stream the models never saw"
            )
        if warmup_events is not None:
            warmup = warmup_events
        elif data is None:
            warmup = max(calibration_stream_age(m.metadata) for m in loaded.values())
        else:
            warmup = 0
        per_s = event_rate
        if data is None and per_s is None:
            per_s = _training_event_rate(loaded)
        dataset, source = _dataset(
            cfg, data, labels, eval_seed, warmup + events, None, None, per_s, progress
        )
        settings = EvaluationSettings(
            tune_fraction=tune_fraction,
            target_fpr=target_fpr,
            warmup_events=warmup,
            recalibrate=recalibrate,
        )
        scorers = {n: ModelScorer.from_loaded(m, chosen_runtime) for n, m in loaded.items()}
        result = evaluate_stream(
            dataset, scorers, cfg.ensemble, cfg.flags, settings, progress,
            {n: m.version for n, m in loaded.items()},
        )  # fmt: skip
        result.report["source"] = source
        result.report["runtime"] = runtime
        if data is None:
            from services.generator.oracle import oracle_ceiling

            progress("[evaluate] oracle ceiling of the test part")
            stream = result.report["stream"]
            result.report["oracle"] = oracle_ceiling(
                _generated_spec(cfg, eval_seed, None, None, per_s),
                stream["warmup_events"] + stream["tune_events"],
                stream["events"],
                target_fpr,
            )
        if not skip_adbench:
            folder = adbench or default_adbench_dir(REPO_ROOT)
            result.report["adbench"] = run_adbench(folder, progress=progress)
            if "skipped" in result.report["adbench"]:
                typer.echo(
                    f"ADBench check skipped: {result.report['adbench']['skipped']}", err=True
                )
        paths = write_report(result, out)
        comp = result.report["comparison"]
        typer.echo(
            f"ensemble ({comp['ensemble_strategy']}) TPR {comp['ensemble_at_target']['tpr']:.3f} "
            f"at FPR <= {comp['fpr_key']}; best baseline ({comp['best_baseline']}) "
            f"{comp['baseline_at_target']['tpr']:.3f}; tuned threshold: TPR "
            f"{comp['ensemble_tuned_threshold']['tpr']:.3f} FPR "
            f"{comp['ensemble_tuned_threshold']['fpr']:.4f}"
            + _per_type_summary(result.report)
            + (
                f"; oracle ceiling {result.report['oracle']['tpr']:.3f}"
                if "oracle" in result.report
                else ""
            )
        )
        for path in paths:
            typer.echo(f"wrote {path}")

    _guard_models(_run)


def _per_type_summary(report: dict[str, Any]) -> str:
    """The suggested vote's test figures with thresholds per type, for the summary line."""
    test = report["ensemble"].get("suggested", {}).get("test_per_type_thresholds")
    if not test:
        return ""
    return (
        f"; suggested weights and thresholds per type (report.md): TPR {test['tpr']:.3f} "
        f"FPR {test['fpr']:.4f}"
    )


# --------------------------------------------------------------------------- registry


def _parse_model(model: str) -> ModelName:
    try:
        return ModelName(model)
    except ValueError:
        raise UserError(
            f"unknown model {model!r} (expected one of: {', '.join(m.value for m in ModelName)})"
        ) from None


@models_app.command("list")
def models_list(store: StoreOption = None, config: ConfigOption = None) -> None:
    """Every registered version, newest last; * marks the promoted one."""

    def _run() -> None:
        from models.registry import Registry

        cfg = load_config(config)
        registry = Registry(_store(cfg, store))
        rows = registry.list()
        if not rows:
            typer.echo(f"no models in {registry.root} (run `anomaly train`)")
            return
        typer.echo(f"{'model':<17} {'version':>7}  {'created':<25} {'ROC-AUC':>8} {'TPR@0.3%':>9}")
        for r in rows:
            if r.problem is not None:
                typer.echo(f"{r.name.value:<17} {r.version:>6}   UNREADABLE: {r.problem}")
                continue
            roc = r.metrics.get("roc_auc")
            tpr = r.metrics.get("tpr_at_fpr", {}).get("0.3%", {}).get("tpr")
            mark = "*" if r.promoted else " "
            typer.echo(
                f"{r.name.value:<17} {r.version:>6}{mark}  {r.created_at:<25} "
                f"{'' if roc is None else f'{roc:.4f}':>8} {'' if tpr is None else f'{tpr:.3f}':>9}"
            )

    _guard_models(_run)


@models_app.command("show")
def models_show(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[
        str | None, typer.Argument(help="Version (default: the one that would serve).")
    ] = None,
    full: Annotated[bool, typer.Option("--full", help="Include the calibration table.")] = False,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Print a version's metadata as JSON (integrity verified)."""

    def _run() -> None:
        from models.registry import Registry

        cfg = load_config(config)
        registry = Registry(_store(cfg, store))
        name = _parse_model(model)
        chosen = version or registry.resolve_with_flags(name, cfg.flags)
        registry.verify(name, chosen)
        meta = registry.metadata(name, chosen)
        if not full:
            table = meta.get("calibration", {})
            meta["calibration"] = {
                "knots": len(table.get("raw", [])), "normal_count": table.get("normal_count"),
            }  # fmt: skip
        meta["promoted"] = registry.promoted(name) == chosen
        meta["path"] = str(registry.version_dir(name, chosen))
        typer.echo(json.dumps(meta, indent=2))

    _guard_models(_run)


@models_app.command("promote")
def models_promote(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="Version to promote.")],
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Make a version the one served (unless a version is pinned in flags)."""

    def _run() -> None:
        from models.registry import Registry

        cfg = load_config(config)
        registry = Registry(_store(cfg, store))
        name = _parse_model(model)
        if version not in registry.versions(name):
            raise UserError(f"{name.value} has no version {version} in {registry.root}")
        registry.promote(name, version)
        typer.echo(f"{name.value}: promoted version {version}")
        pinned = cfg.flags.models.get(name)
        if pinned is not None and pinned.version is not None and pinned.version != version:
            typer.echo(
                f"note: flags.models.{name.value}.version pins {pinned.version}, "
                "which still serves",
                err=True,
            )

    _guard_models(_run)


@models_app.command("score-series")
def models_score_series(
    metrics_csv: Annotated[
        list[Path], typer.Argument(help="CSV files: timestamp,value[,entity_id].")
    ],
    scores_out: Annotated[
        Path, typer.Option("--scores-out", help="Per-sample score CSV to write.", dir_okay=False)
    ],
    fit_fraction: Annotated[
        float,
        typer.Option(
            "--fit-fraction", min=0.1, max=1.0, help="Leading share of samples to fit on."
        ),
    ] = 0.5,
    registry_models: Annotated[
        bool,
        typer.Option(
            "--registry",
            help="Score with the registered unsupervised models instead of fitting on the series.",
        ),
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the fits.")] = 42,
    store: StoreOption = None,
    quiet: QuietOption = False,
    config: ConfigOption = None,
) -> None:
    """Score univariate metric series (events of kind `metric`) with the unsupervised models."""

    def _run() -> None:
        from models.metric_series import (
            UNSUPERVISED,
            read_metric_series,
            score_metric_series,
            write_scores_csv,
        )
        from models.registry import Registry
        from models.scoring import ModelScorer

        cfg = load_config(config)
        progress = _progress(quiet)
        events = read_metric_series(metrics_csv)
        scorers = None
        if registry_models:
            registry = Registry(_store(cfg, store))
            scorers = {
                n: ModelScorer.from_loaded(registry.load(n, flags=cfg.flags)) for n in UNSUPERVISED
            }
        columns = score_metric_series(events, scorers, fit_fraction, seed, progress=progress)
        rows = write_scores_csv(columns, scores_out)
        typer.echo(f"wrote {rows:,} scored samples to {scores_out}")

    _guard_models(_run)
