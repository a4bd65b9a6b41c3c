"""Model code, training, ONNX export, registry and evaluation; usable without any broker or server."""
