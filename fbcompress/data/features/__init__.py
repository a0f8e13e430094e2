"""Per-patch image features of a dataset dir (the paper's ResNet-50 patches): made by `data features`, read by the
loader."""
