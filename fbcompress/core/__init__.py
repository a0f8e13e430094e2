"""The core layer: the one error contract, atomic artifact writing and hashing, and the torchrun plumbing that
every multi-process stage shares (training, feature extraction). Imports nothing else of fbcompress."""
