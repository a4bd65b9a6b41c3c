"""The Transformer network (needs torch: the `train` extra). Imported lazily by
`models.transformer`, so that the rest of `models` works without torch.

Scoring by masked next-step prediction: the current event's row is hidden behind a learned
mask token and predicted from the entity's previous rows; the score is the squared error
of that prediction, per feature divided by its typical (training) error, averaged. A plain
reconstruction autoencoder of the whole sequence could learn to copy its input; hiding the
current row forces the model to learn what normally follows a given history.

Preprocessing lives inside the network (asinh, then standardisation with buffers fitted on
normal training rows, NaN padding rows mapped to zero plus a "padding" input flag), so the
ONNX export takes raw feature rows exactly like the native model and no serving code has to
re-implement it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SequenceScorer(nn.Module):
    """(batch, seq, n_features) raw feature rows -> (batch,) anomaly score."""

    center: Tensor
    """Mean of asinh(feature) over normal training rows."""
    scale: Tensor
    """Standard deviation of asinh(feature) over normal training rows."""
    error_scale: Tensor
    """Root-mean-square training prediction error per standardized feature."""

    def __init__(
        self,
        n_features: int,
        seq_len: int,
        d_model: int = 32,
        heads: int = 2,
        layers: int = 2,
        ff: int = 64,
    ) -> None:
        super().__init__()
        self.n_features = n_features
        self.seq_len = seq_len
        self.register_buffer("center", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        self.register_buffer("error_scale", torch.ones(n_features))
        self.embed = nn.Linear(n_features + 1, d_model)
        self.position = nn.Parameter(torch.zeros(seq_len, d_model))
        self.mask_token = nn.Parameter(torch.zeros(d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, heads, ff, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, n_features)
        nn.init.normal_(self.position, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def standardize(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """asinh + standardisation; NaN (padding) rows become zeros. Returns (z, pad flag)."""
        pad = torch.isnan(x[..., :1])
        z = (torch.asinh(x) - self.center) / self.scale
        z = torch.where(torch.isnan(z), torch.zeros_like(z), z)
        return z, pad.to(z.dtype)

    def predict(self, z: Tensor, pad: Tensor) -> Tensor:
        """Prediction of the last row's standardized features from the rows before it."""
        h = self.embed(torch.cat([z, pad], dim=-1))
        batch = h.shape[0]
        masked = self.mask_token.expand(batch, 1, -1)
        h = torch.cat([h[:, :-1, :], masked], dim=1) + self.position
        h = self.encoder(h)
        out: Tensor = self.head(h[:, -1, :])
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Normalised squared prediction error of the current (last) row."""
        z, pad = self.standardize(x)
        pred = self.predict(z, pad)
        err = (pred - z[:, -1, :]) / self.error_scale
        out: Tensor = (err * err).mean(dim=-1)
        return out
