"""fbcompress: train a FashionBERT teacher, compress it, and hand fast engines to serving teams.

The Python API, for notebooks and serving prototypes (the commands are `fbcompress --help`):

    from fbcompress import load_recipe, load_model, open_scorer, match_scores

`load_recipe(name_or_path)` a validated recipe; `load_model(checkpoint_dir)` the FashionBERT module and its
checkpoint record; `open_scorer(path)` a scorer for any model form (checkpoint dir, .onnx, .plan, bundle dir);
`match_scores(scorer, texts, images)` the match probability of each (text, image) pair. They are imported on first
use, so `import fbcompress` (and `fbcompress --help`) stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {
    "load_recipe": "fbcompress.recipes",
    "load_model": "fbcompress.modeling.checkpoint",
    "open_scorer": "fbcompress.runtime.scoring",
    "match_scores": "fbcompress.runtime.scoring",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'fbcompress' has no attribute {name!r}")
