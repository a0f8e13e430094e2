"""Measuring a model: the design.md metrics on a dataset, latency, and the tolerance rule."""
