"""A fitted scikit-learn IsolationForest as one ONNX tree-ensemble node.

skl2onnx converts the forest tree by tree: each tree is a TreeEnsembleRegressor that returns
a leaf id, LabelEncoders map the leaf to its depth and sample count, and a chain of Cast, Add,
Mul, Max and Div nodes computes the path length (4,004 nodes for our 100 trees). ONNX Runtime
pays a fixed cost per node on every call, so scoring one row took 5.5 ms on this machine,
against 0.08 ms for the XGBoost export (one node): the slowest single-row call of the three
model servers, and the reason the forest's serving p99 at 1,000 requests/s was the worst.

The forest needs no per-tree arithmetic at scoring time. A row's path length in one tree is a
constant of the leaf it lands in: the leaf's depth plus c(n), the average path length of the
unbuilt subtree over that leaf's n training samples (Liu et al., 2008; scikit-learn's
`_compute_score_samples` adds the same two terms). The sum over trees is therefore exactly a
tree-ensemble regression with those constants as leaf weights, and `decision_function`
follows from the sum with three elementwise nodes:

    decision_function(x) = -2 ** (-sum(x) / (n_trees * c(max_samples))) - offset_

Exactness against scikit-learn: its trees compare the float32 input with float64
thresholds, while ONNX thresholds are float32. Each threshold t is stored as the largest
float32 not above t, which keeps every comparison as scikit-learn makes it (for any float32
x: x <= t exactly when x <= that float). Missing values follow each node's
`missing_go_to_left`, as scikit-learn routes them. Training still checks the export against
the native model on held-out rows (`TrainSettings.parity_tolerance`).
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

from models.detector import F64

INPUT: Final = "features"
OUTPUT: Final = "scores"
OPSET: Final = {"": 15, "ai.onnx.ml": 3}
_LEAF: Final = -1  # scikit-learn's TREE_LEAF child id


def average_path_length(n: npt.ArrayLike) -> F64:
    """c(n): the average path length of an unsuccessful search in a binary search tree of n
    nodes, i.e. the depth an isolation tree over n samples would still have added."""
    n = np.asarray(n, np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


def _float32_at_most(t: F64) -> npt.NDArray[np.float32]:
    """The largest float32 <= t, elementwise."""
    t32 = t.astype(np.float32)
    above = t32.astype(np.float64) > t
    t32[above] = np.nextafter(t32[above], np.float32(-np.inf))
    return t32


def _node_depths(left: npt.NDArray[np.intp], right: npt.NDArray[np.intp]) -> F64:
    """Edges from the root; scikit-learn numbers a node after its parent."""
    depth = np.zeros(len(left), np.float64)
    for node in range(len(left)):
        if left[node] != _LEAF:
            depth[left[node]] = depth[right[node]] = depth[node] + 1.0
    return depth


def forest_attributes(estimator: Any) -> dict[str, list[Any]]:
    """The TreeEnsembleRegressor attributes of a fitted IsolationForest: every tree, with
    its leaves weighted by their path length."""
    # scikit-learn gives the trees the full row, in order, unless each tree drew fewer
    # features than there are (then a tree's feature i is column estimators_features_[i]).
    subsampled = len(estimator.estimators_features_[0]) != int(estimator.n_features_in_)
    attrs: dict[str, list[Any]] = {
        key: []
        for key in (
            "nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_values",
            "nodes_modes", "nodes_truenodeids", "nodes_falsenodeids",
            "nodes_missing_value_tracks_true", "target_treeids", "target_nodeids",
            "target_ids", "target_weights",
        )
    }  # fmt: skip
    for tree_id, (tree, features) in enumerate(
        zip(estimator.estimators_, estimator.estimators_features_, strict=True)
    ):
        t = tree.tree_
        left, right = t.children_left, t.children_right
        n = len(left)
        leaf = left == _LEAF
        feature = np.where(leaf, 0, t.feature)
        if subsampled:
            feature = np.where(leaf, 0, np.asarray(features)[feature])
        go_left_if_missing = np.asarray(t.missing_go_to_left)
        attrs["nodes_treeids"] += [tree_id] * n
        attrs["nodes_nodeids"] += list(range(n))
        attrs["nodes_featureids"] += feature.astype(int).tolist()
        attrs["nodes_values"] += np.where(leaf, 0.0, _float32_at_most(t.threshold)).tolist()
        attrs["nodes_modes"] += ["LEAF" if is_leaf else "BRANCH_LEQ" for is_leaf in leaf]
        attrs["nodes_truenodeids"] += np.where(leaf, 0, left).astype(int).tolist()
        attrs["nodes_falsenodeids"] += np.where(leaf, 0, right).astype(int).tolist()
        attrs["nodes_missing_value_tracks_true"] += (
            np.where(leaf, 0, go_left_if_missing).astype(int).tolist()
        )
        leaves = np.flatnonzero(leaf)
        weight = _node_depths(left, right)[leaves] + average_path_length(t.n_node_samples[leaves])
        attrs["target_treeids"] += [tree_id] * len(leaves)
        attrs["target_nodeids"] += leaves.astype(int).tolist()
        attrs["target_ids"] += [0] * len(leaves)
        attrs["target_weights"] += weight.astype(np.float32).tolist()
    return attrs


def isolation_forest_onnx(estimator: Any, n_features: int, name: str) -> bytes:
    """The ONNX model: input `features` (float32, n x n_features), output `scores`
    (float32, n x 1) = `estimator.decision_function`."""
    import onnx
    from onnx import TensorProto, helper

    per_tree = float(average_path_length([estimator.max_samples_])[0])
    denominator = len(estimator.estimators_) * per_tree
    if denominator <= 0.0:
        raise ValueError("a forest fitted on fewer than 2 samples per tree has no score")
    attributes: dict[str, Any] = {
        "n_targets": 1, "aggregate_function": "SUM", "post_transform": "NONE",
        **forest_attributes(estimator),
    }  # fmt: skip
    tree_sum = helper.make_node(
        "TreeEnsembleRegressor", [INPUT], ["path_length_sum"], domain="ai.onnx.ml", **attributes
    )
    scalar = TensorProto.FLOAT
    constants = [
        helper.make_tensor("minus_inverse_denominator", scalar, [], [-1.0 / denominator]),
        helper.make_tensor("two", scalar, [], [2.0]),
        helper.make_tensor("minus_offset", scalar, [], [-float(estimator.offset_)]),
    ]
    graph = helper.make_graph(
        [
            tree_sum,
            helper.make_node("Mul", ["path_length_sum", "minus_inverse_denominator"], ["exponent"]),
            helper.make_node("Pow", ["two", "exponent"], ["isolation"]),
            helper.make_node("Sub", ["minus_offset", "isolation"], [OUTPUT]),
        ],
        name,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [None, 1])],
        initializer=constants,
    )
    model = helper.make_model(
        graph,
        producer_name="anomaly-platform",
        opset_imports=[helper.make_opsetid(domain, v) for domain, v in OPSET.items()],
        ir_version=8,
    )
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data
