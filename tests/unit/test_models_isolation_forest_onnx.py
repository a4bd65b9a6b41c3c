"""The Isolation Forest's single-node ONNX export scores exactly as scikit-learn does."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from models.isolation_forest_onnx import average_path_length, isolation_forest_onnx

F32 = npt.NDArray[np.float32]
N_FEATURES = 6


def _rows(n: int, seed: int) -> F32:
    rng = np.random.default_rng(seed)
    return (rng.standard_t(3, size=(n, N_FEATURES)) * 4).astype(np.float32)


def _forest(max_features: float = 1.0, seed: int = 3) -> Any:
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(
        n_estimators=25, max_samples=200, max_features=max_features, random_state=seed
    )
    return forest.fit(_rows(2_000, seed))


def _onnx_scores(forest: Any, x: F32) -> npt.NDArray[np.float64]:
    import onnxruntime as ort

    session = ort.InferenceSession(
        isolation_forest_onnx(forest, N_FEATURES, "forest"), providers=["CPUExecutionProvider"]
    )
    out = session.run(["scores"], {"features": x})[0]
    assert out.shape == (len(x), 1) and out.dtype == np.float32
    return np.asarray(out, np.float64).ravel()


@pytest.mark.parametrize("max_features", [1.0, 0.5])
def test_export_matches_decision_function(max_features: float) -> None:
    """0.5: each tree sees a subset of the columns, in its own order."""
    forest = _forest(max_features)
    x = _rows(3_000, seed=11)
    np.testing.assert_allclose(
        _onnx_scores(forest, x), forest.decision_function(x), rtol=0, atol=1e-6
    )


def test_rows_on_a_threshold_take_scikit_learns_branch() -> None:
    """Thresholds are float64 in scikit-learn; a row at the float32 nearest to a threshold
    lies above it about half the time, and plain rounding would send it left."""
    forest = _forest()
    rng = np.random.default_rng(5)
    x = _rows(4_000, seed=12)
    tree = forest.estimators_[0].tree_
    splits = np.flatnonzero(tree.children_left != -1)
    rounded_up = splits[tree.threshold[splits].astype(np.float32) > tree.threshold[splits]]
    assert len(rounded_up) > 5  # the case this test is about does occur
    nodes = rng.choice(rounded_up, len(x))
    x[np.arange(len(x)), tree.feature[nodes]] = tree.threshold[nodes].astype(np.float32)
    np.testing.assert_allclose(
        _onnx_scores(forest, x), forest.decision_function(x), rtol=0, atol=1e-6
    )


def test_missing_values_follow_scikit_learns_routing() -> None:
    forest = _forest()
    x = _rows(2_000, seed=13)
    x[np.random.default_rng(6).random(x.shape) < 0.2] = np.nan
    np.testing.assert_allclose(
        _onnx_scores(forest, x), forest.decision_function(x), rtol=0, atol=1e-6
    )


def test_export_is_one_tree_node_and_agrees_with_skl2onnx() -> None:
    import onnx
    import onnxruntime as ort
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    forest = _forest()
    model = onnx.load_from_string(isolation_forest_onnx(forest, N_FEATURES, "forest"))
    ops = [node.op_type for node in model.graph.node]
    assert ops == ["TreeEnsembleRegressor", "Mul", "Pow", "Sub"]
    reference = convert_sklearn(
        forest, initial_types=[("features", FloatTensorType([None, N_FEATURES]))],
        target_opset={"": 15, "ai.onnx.ml": 3},
    )  # fmt: skip
    assert len(reference.graph.node) > 20 * len(forest.estimators_)  # per-tree arithmetic
    x = _rows(1_000, seed=14)
    session = ort.InferenceSession(
        reference.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    theirs = session.run(["scores"], {"features": x})[0].ravel()
    np.testing.assert_allclose(_onnx_scores(forest, x), theirs, rtol=0, atol=1e-5)


def test_average_path_length_is_scikit_learns() -> None:
    """The leaf weights use the same c(n) (2 (ln(n-1) + gamma) - 2 (n-1)/n; c(2) = 1)."""
    from sklearn.ensemble._iforest import _average_path_length

    n = np.array([0, 1, 2, 3, 10, 256, 1024])
    np.testing.assert_allclose(average_path_length(n), _average_path_length(n), atol=1e-12)
    assert list(average_path_length([1, 2])) == [0.0, 1.0]
