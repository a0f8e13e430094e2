"""Metrics exactly as design.md defines them: ACC/AUC on fixed pairs, ITR/TIR Rank@K on fixed query sets.

Every number comes from the dataset dir's eval files, made once with a seed, so all models and backends are
scored on the same candidates. Pairs and each Rank@K query's candidates (1 positive + N negatives) go through the
scorer in batches grouped by text length, so each batch is padded only to its own longest text (VSL): for ITR,
where the 101 candidate texts differ, that made a 6-layer teacher's query 25% cheaper than one batch padded to
the longest candidate (3.5 -> 2.6 s on a 2-core CPU).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fbcompress.core.errors import FbError
from fbcompress.data.dataset_dir import DatasetDir
from fbcompress.data.loader import SplitData
from fbcompress.runtime.scoring import Scorer, scores_in_length_order

RANKS = (1, 5, 10)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC by the rank-sum (Mann-Whitney) formula, ties counted half."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def rank_of_positive(scores: np.ndarray) -> int:
    """1-based rank of candidate 0 (the positive); ties count against it (pessimistic)."""
    return int(1 + np.sum(scores[1:] >= scores[0]))


RANK_BATCH = 32  # a query's 101 candidates in ~4 length-sorted batches: little padding, GEMMs still large


def score_rows(
    scorer: Scorer, data: SplitData, image_rows: list[int], text_rows: list[int], batch_size: int = 64,
    progress: bool = False,
) -> np.ndarray:
    """Match probability of each (image row, text row) pair, scored in batches of similar text length (VSL)."""
    return scores_in_length_order(
        scorer, [len(data.token_ids[t]) for t in text_rows],
        lambda chunk: data.batch([image_rows[i] for i in chunk], [text_rows[i] for i in chunk]), batch_size, progress,
    )


def score_pairs(
    scorer: Scorer, data: SplitData, pairs: list[dict], batch_size: int = 64, progress: bool = False
) -> np.ndarray:
    image_rows = [data.position(p["image"]) for p in pairs]
    text_rows = [data.position(p["text"]) for p in pairs]
    return score_rows(scorer, data, image_rows, text_rows, batch_size, progress)


def classification_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    labels = np.asarray(labels)
    return {
        "accuracy": float(np.mean((scores > 0.5) == (labels == 1))),
        "auc": roc_auc(labels, scores),
    }


def rank_metrics(scorer: Scorer, data: SplitData, queries: list[dict], mode: str, progress: bool) -> dict:
    """ITR: the query image against candidate texts; TIR: the query text against candidate images."""
    ranks = []
    for query in tqdm(queries, desc=mode.upper(), disable=not progress, leave=False):
        q = data.position(query["query"])
        candidates = [data.position(query["positive"])] + [data.position(n) for n in query["negatives"]]
        if mode == "itr":
            scores = score_rows(scorer, data, [q] * len(candidates), candidates, RANK_BATCH)
        else:
            scores = score_rows(scorer, data, candidates, [q] * len(candidates), RANK_BATCH)
        ranks.append(rank_of_positive(scores))
    ranks_arr = np.asarray(ranks)
    return {f"r{k}": float(np.mean(ranks_arr <= k)) if len(ranks) else float("nan") for k in RANKS}


def evaluate(
    scorer: Scorer,
    dataset: DatasetDir,
    data: SplitData,
    split: str = "test",
    max_queries: int | None = None,
    tasks: Iterable[str] = ("pairs", "itr", "tir"),
    progress: bool = True,
) -> dict:
    tasks = set(tasks)
    result: dict = {"split": split, "model": scorer.name, "backend": scorer.backend}
    if "pairs" in tasks:
        pairs = dataset.eval_rows("pairs", split)
        scores = score_pairs(scorer, data, pairs, progress=progress)
        result.update(classification_metrics(np.array([p["label"] for p in pairs]), scores))
        result["n_pairs"] = len(pairs)
    n_negatives = 0
    for mode in ("itr", "tir"):
        if mode not in tasks:
            continue
        queries = dataset.eval_rows(mode, split)[:max_queries]
        result[mode] = rank_metrics(scorer, data, queries, mode, progress)
        result["n_queries"] = len(queries)
        n_negatives = max((len(q["negatives"]) for q in queries), default=0)
    if {"itr", "tir"} & tasks:
        result["n_negatives"] = n_negatives
    result["synthetic"] = bool(dataset.meta.get("synthetic", False))
    return result


def evaluate_model(scorer: Scorer, model_path: Path, dataset: DatasetDir, split: str = "test",
                   max_queries: int | None = None, progress: bool = False) -> dict:
    """`fbcompress eval` and each model of `fbcompress check`: the design.md metrics of `scorer` on a dataset dir's
    fixed eval sets, stamped with the model's weights and the data's fingerprint (so `check` and `quantize` can
    reuse the result), and the parity against PyTorch of a checkpoint scored in ONNX Runtime."""
    from fbcompress.modeling.backbone import load_tokenizer

    data = SplitData(dataset, split, load_tokenizer(scorer.tokenizer_dir), scorer.spec)
    result = stamp(evaluate(scorer, dataset, data, split, max_queries=max_queries, progress=progress), model_path,
                   dataset)
    parity = getattr(scorer, "parity", None)
    if parity is not None:
        result["parity_vs_pytorch"] = {k: parity[k] for k in ("max_abs_diff", "tolerance")}
    return result


def format_table(result: dict) -> str:
    rows = [("model", result["model"]), ("backend", result["backend"]), ("split", result["split"])]
    if "auc" in result:
        rows += [("ACC", f"{result['accuracy']:.4f}"), ("AUC", f"{result['auc']:.4f}")]
    for mode in ("itr", "tir"):
        if mode in result:
            r = result[mode]
            rows.append((f"{mode.upper()} R@1/5/10", f"{r['r1']:.3f} / {r['r5']:.3f} / {r['r10']:.3f}"))
    if "n_queries" in result:
        rows.append(("queries x negatives", f"{result['n_queries']} x {result['n_negatives']}"))
    if result.get("synthetic"):
        rows.append(("data", "synthetic catalogue"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def model_sha256(path: Path) -> str | None:
    """sha256 of the file that holds a model's weights: a checkpoint's model.safetensors, or the .onnx/.plan."""
    from fbcompress.core.artifacts import sha256_file

    path = Path(path)
    weights = path / "model.safetensors" if path.is_dir() else path
    return sha256_file(weights) if weights.is_file() else None


def stamp(result: dict, model_path: Path, dataset: DatasetDir) -> dict:
    """Record which weights and which data a result describes, so it can be reused safely (check --teacher-eval)."""
    result["model_sha256"] = model_sha256(model_path)
    result["data_fingerprint"] = dataset.fingerprint
    return result


def reusable_eval(path: Path, model_path: Path, dataset: DatasetDir, split: str, max_queries: int | None) -> dict:
    """A saved `fbcompress eval --json` result, refused unless it was made from these weights, data and split."""
    from fbcompress.core.artifacts import read_json

    result = read_json(path, "eval result")
    if not isinstance(result, dict) or not {"auc", "itr", "tir"} <= result.keys():
        raise FbError(f"{path} is not an `fbcompress eval --json` result with AUC and Rank@K")
    expected = {
        "model_sha256": model_sha256(model_path),
        "data_fingerprint": dataset.fingerprint,
        "split": split,
    }
    for key, value in expected.items():
        if result.get(key) != value:
            raise FbError(f"{path} was not made from this model/data/split ({key} differs); re-run fbcompress eval")
    queries = len(dataset.eval_rows("itr", split)[:max_queries])
    if result.get("n_queries") != queries:
        raise FbError(f"{path} scored {result.get('n_queries')} Rank@K queries; this check scores {queries}")
    return result
