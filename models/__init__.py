"""Model code, training, ONNX export, registry and evaluation; needs no broker or server."""
