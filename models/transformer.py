"""The Transformer detector: unsupervised, over each entity's recent feature rows.

Input: (batch, SEQUENCE_LENGTH, 22) raw feature rows from `models.sequences` (the entity's
previous rows then the current one, NaN-padded at the front for young entities). Output:
how badly the previous rows predict the current one (see `transformer_net`). It is trained
on sequences ending in normal events only; contexts may contain anomalies, as they will
when serving.

Needs torch (the `train` extra) to train and for the native runtime; the exported ONNX
file runs without it. Runs on CUDA when `torch.cuda.is_available()`, else on the CPU.
"""

from __future__ import annotations

import io
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from models.detector import F32, F64, I64, InputKind, NativeModel
from models.errors import MissingExtraError
from models.progress import Progress, Throttle, silent
from models.sequences import SEQUENCE_LENGTH, gather_sequences
from services.common.features.definition import FEATURE_NAMES
from services.common.model_names import ModelName

if TYPE_CHECKING:
    from models.transformer_net import SequenceScorer

ONNX_OPSET: Final = 18
_SCALE_FLOOR: Final = 1e-3


def _require_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise MissingExtraError(
            "the Transformer needs torch: pip install 'anomaly-platform[train]'"
        ) from None
    return torch


@dataclass(frozen=True, slots=True)
class TransformerSettings:
    """Architecture and training schedule."""

    sequence_length: int = SEQUENCE_LENGTH
    d_model: int = 32
    heads: int = 2
    layers: int = 2
    ff: int = 64
    epochs: int = 3
    batch_size: int = 256
    learning_rate: float = 2e-3
    max_sequences: int = 150_000
    """Training sequences sampled (ending in normal events) per fit."""
    device: str | None = None
    """None = CUDA when available, else CPU."""


def pick_device(requested: str | None = None) -> str:
    """The torch device to train on: the requested one, else CUDA when present."""
    if requested:
        return requested
    torch = _require_torch()
    return "cuda" if torch.cuda.is_available() else "cpu"


def _predict(net: SequenceScorer, x: F32, batch: int = 4096) -> F32:
    torch = _require_torch()
    device = next(net.parameters()).device
    outs = []
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            part = torch.from_numpy(np.ascontiguousarray(x[start : start + batch], np.float32))
            outs.append(net(part.to(device)).float().cpu().numpy())
    out: F32 = np.concatenate(outs).astype(np.float32) if outs else np.empty(0, np.float32)
    return out


class TransformerDetector:
    """A fitted SequenceScorer (kept on the CPU after training)."""

    onnx_max_rows: int | None = None
    """Always its ONNX export: as fast as torch on the CPU, and serving never needs torch."""

    def __init__(self, net: SequenceScorer, settings: TransformerSettings, device: str) -> None:
        self.net = net
        self.settings = settings
        self.trained_on = device

    def raw_output(self, x: F32) -> F32:
        """Score per sequence, shape (n,)."""
        return _predict(self.net, x)

    def save_native(self, folder: Path) -> str:
        """`model.pt`: the state dict (architecture in the metadata)."""
        torch = _require_torch()
        buffer = io.BytesIO()
        torch.save(self.net.state_dict(), buffer)
        (folder / KIND.native_file).write_bytes(buffer.getvalue())
        return KIND.native_file

    def to_onnx(self) -> bytes:
        """ONNX (opset 18) with input `features` (batch, seq, 22) and output `score`.

        Uses the dynamo exporter (needs `onnxscript`): the TorchScript one is deprecated,
        cannot translate `asinh`, and fails on nn.TransformerEncoder's fused fast path.
        """
        torch = _require_torch()
        net = self.net.eval()
        example = torch.zeros(2, self.settings.sequence_length, len(FEATURE_NAMES))
        example[0, :3] = float("nan")
        # The exporter warns that torchvision's operators are unavailable: irrelevant here.
        noisy = logging.getLogger("torch.onnx._internal.exporter._registration")
        level = noisy.level
        noisy.setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(
                net,
                (example,),
                dynamo=True,
                input_names=["features"],
                output_names=["score"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=ONNX_OPSET,
                verbose=False,
            )
        finally:
            noisy.setLevel(level)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            program.save(str(path), external_data=False)
            return path.read_bytes()

    def describe(self) -> dict[str, Any]:
        """Architecture, schedule and the preprocessing parameters (also in the weights)."""
        net = self.net
        return {
            "hyperparameters": {**asdict(self.settings), "device": self.trained_on},
            "preprocessing": {
                "transform": "asinh",
                "standardize": {
                    "center": net.center.tolist(),
                    "scale": net.scale.tolist(),
                },
                "error_scale": net.error_scale.tolist(),
                "padding": "NaN rows at the front of the sequence",
            },
            "sequence_length": self.settings.sequence_length,
        }


def build_net(settings: TransformerSettings) -> SequenceScorer:
    """An untrained network with these settings."""
    _require_torch()
    from models.transformer_net import SequenceScorer

    return SequenceScorer(
        len(FEATURE_NAMES),
        settings.sequence_length,
        d_model=settings.d_model,
        heads=settings.heads,
        layers=settings.layers,
        ff=settings.ff,
    )


def fit_transformer(
    matrix: F32,
    index: I64,
    train_rows: I64,
    settings: TransformerSettings,
    seed: int,
    progress: Progress = silent,
) -> TransformerDetector:
    """Train on the sequences ending at `train_rows` (normal events of the fit split).

    `index` is `history_index(entity codes)` over the whole stream, so every sequence has
    its real history even when it starts before the fit split.
    """
    torch = _require_torch()
    device = pick_device(settings.device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rows = np.asarray(train_rows, np.int64)
    if len(rows) > settings.max_sequences:
        rows = np.sort(rng.choice(rows, settings.max_sequences, replace=False))

    net = build_net(settings)
    z = np.arcsinh(matrix[rows].astype(np.float64))
    net.center.copy_(torch.from_numpy(z.mean(axis=0)).float())
    net.scale.copy_(torch.from_numpy(np.maximum(z.std(axis=0), _SCALE_FLOOR)).float())
    net.to(device).train()
    optimiser = torch.optim.AdamW(net.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    steps_per_epoch = max(1, -(-len(rows) // settings.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, settings.learning_rate, total_steps=settings.epochs * steps_per_epoch
    )
    throttle = Throttle(progress)
    for epoch in range(settings.epochs):
        order = rows[rng.permutation(len(rows))]
        total = 0.0
        for step in range(steps_per_epoch):
            batch_rows = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            x = torch.from_numpy(gather_sequences(matrix, index[batch_rows])).to(device)
            zx, pad = net.standardize(x)
            loss = torch.nn.functional.mse_loss(net.predict(zx, pad), zx[:, -1, :])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            total += float(loss.detach())
            throttle(
                f"[transformer] epoch {epoch + 1}/{settings.epochs} "
                f"step {step + 1}/{steps_per_epoch} loss {total / (step + 1):.4f}"
            )
    net.eval()
    # Typical error per feature on (a sample of) the training sequences: features that are
    # inherently unpredictable must not dominate the score.
    sample = rows[: min(len(rows), 50_000)]
    with torch.inference_mode():
        errs = []
        for start in range(0, len(sample), 4096):
            x = torch.from_numpy(gather_sequences(matrix, index[sample[start : start + 4096]]))
            zx, pad = net.standardize(x.to(device))
            errs.append(((net.predict(zx, pad) - zx[:, -1, :]) ** 2).mean(dim=0) * len(x))
        mse = torch.stack(errs).sum(dim=0) / len(sample)
    net.error_scale.copy_(torch.sqrt(mse).clamp_min(_SCALE_FLOOR))
    net.cpu()
    return TransformerDetector(net, settings, device)


class _Native:
    def __init__(self, net: SequenceScorer) -> None:
        self._net = net

    def raw_output(self, x: F32) -> F32:
        return _predict(self._net, x)


class TransformerKind:
    """Output semantics and loading of Transformer artifacts."""

    name = ModelName.TRANSFORMER
    input_kind = InputKind.SEQUENCES
    native_file = "model.pt"
    onnx_output = "score"

    def anomaly_raw(self, raw: F32) -> F64:
        """The normalised prediction error itself."""
        out: F64 = np.asarray(raw, np.float64).reshape(-1)
        return out

    def predicted_type(self, raw: F32) -> I64 | None:
        """The Transformer does not predict a type."""
        return None

    def load_native(self, folder: Path, metadata: dict[str, Any]) -> NativeModel:
        """Rebuild the network from the metadata and load `model.pt` (weights only)."""
        torch = _require_torch()
        hp = metadata["hyperparameters"]
        fields = TransformerSettings.__dataclass_fields__
        settings = TransformerSettings(**{k: v for k, v in hp.items() if k in fields})
        net = build_net(settings)
        state = torch.load(folder / self.native_file, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        return _Native(net.eval())


KIND: Final = TransformerKind()
