"""fbcompress: train a FashionBERT teacher, compress it, and hand fast engines to serving teams."""

__version__ = "0.1.0"
