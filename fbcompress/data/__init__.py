"""Datasets: the dataset-dir format, its producers (synthetic catalogue, Fashion-Gen) and the training loader."""
