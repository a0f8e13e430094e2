"""Datasets: the dataset-dir format, its producers (synthetic catalogue, Fashion-Gen, a user's own catalogue through
`data import`) and the training loader."""
