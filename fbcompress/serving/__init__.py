"""Serving a bundle for real: Triton Inference Server from the nvidia-pytriton wheel, started and stopped here."""
