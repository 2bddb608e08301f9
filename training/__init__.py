"""verdict training: PyTorch classifiers exported to ONNX with a business threshold."""
