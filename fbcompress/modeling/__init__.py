"""The model: FashionBERT itself, where backbones come from, checkpoint directories, width pruning."""
