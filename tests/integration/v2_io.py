"""Building and reading Open Inference Protocol v2 REST bodies in tests (KServe and Ray doors)."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np

from services.common.features.definition import FEATURE_NAMES

WIDTH = len(FEATURE_NAMES)


def rows(n: int, seed: int = 0) -> np.ndarray:
    """n positive, heavy-tailed feature rows (float32)."""
    rng = np.random.default_rng(seed)
    return rng.lognormal(0, 1, (n, WIDTH)).astype(np.float32)


def v2_body(x: np.ndarray, datatype: str = "FP32", name: str = "features") -> dict[str, Any]:
    """A V2 inference request with one input tensor."""
    return {
        "inputs": [
            {"name": name, "shape": list(x.shape), "datatype": datatype, "data": x.ravel().tolist()}
        ]
    }


def outputs(response: httpx.Response) -> dict[str, np.ndarray]:
    """Output tensors of a successful V2 response, by name."""
    assert response.status_code == 200, response.text
    return {o["name"]: np.asarray(o["data"]) for o in response.json()["outputs"]}
