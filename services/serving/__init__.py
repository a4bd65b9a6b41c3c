"""Model-serving endpoints: one KServe V2 model per model kind, loading registry versions.

Modules: `runtime` (ONNX Runtime or native per batch, CUDA when present), `batching`
(dynamic batching), `v2_model` (the KServe model: validation, versions), `server`
(ModelServer start-up and versioned REST routes), `metrics`.
"""
