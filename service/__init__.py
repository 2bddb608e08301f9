"""verdict serving: FastAPI over ONNX Runtime (no torch)."""
