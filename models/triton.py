"""Triton model-repository configuration for the ONNX exports.

The registry root doubles as a Triton model repository: `<store>/<model>/<version>/model.onnx`
are Triton's numbered version folders, and `<store>/<model>/config.pbtxt` (written here) tells
Triton's ONNX Runtime backend the tensor names and shapes and which version to serve (the
promoted one, else the latest). Triton ignores the other files (metadata, native artifacts).
"""

from __future__ import annotations

from services.common.model_names import ModelName

_OUTPUTS: dict[ModelName, tuple[str, str]] = {
    # name -> (output tensor, dims without the batch dimension, Triton syntax)
    ModelName.ISOLATION_FOREST: ("scores", "dims: [ 1 ]"),
    ModelName.XGBOOST: ("probabilities", "dims: [ 7 ]"),
    ModelName.TRANSFORMER: ("score", "dims: [ 1 ]\n    reshape: { shape: [ ] }"),
}


def triton_config(
    name: ModelName,
    input_dims: list[int],
    version: str | None,
    max_batch_size: int = 8192,
    max_queue_delay_us: int = 2000,
) -> str:
    """config.pbtxt text: ONNX backend, dynamic batching, one pinned version if given."""
    output, dims = _OUTPUTS[name]
    policy = (
        f"version_policy: {{ specific: {{ versions: [ {int(version)} ] }} }}"
        if version is not None
        else "version_policy: { latest: { num_versions: 1 } }"
    )
    input_dims_text = ", ".join(str(d) for d in input_dims)
    return (
        f'name: "{name.value}"\n'
        'backend: "onnxruntime"\n'
        f"max_batch_size: {max_batch_size}\n"
        "input [\n"
        "  {\n"
        '    name: "features"\n'
        "    data_type: TYPE_FP32\n"
        f"    dims: [ {input_dims_text} ]\n"
        "  }\n"
        "]\n"
        "output [\n"
        "  {\n"
        f'    name: "{output}"\n'
        "    data_type: TYPE_FP32\n"
        f"    {dims}\n"
        "  }\n"
        "]\n"
        f"{policy}\n"
        f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}\n"
    )
