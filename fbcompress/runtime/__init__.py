"""Scoring a model in any form: the Scorer protocol and its PyTorch, ONNX Runtime and TensorRT backends."""
