"""The search bundle's README.md, rendered from its manifest: what a serving team runs online, and how."""

from __future__ import annotations

from typing import Any

from fbcompress.bundle.names import (
    BUILD_SCRIPT,
    QUERY_ENCODER_FILE,
    QUERY_ENCODER_INT8_FILE,
    QUERY_ENCODER_INT8_TRT_FILE,
)
from fbcompress.export.triton_readme import triton_section


def _latency_lines(entry: dict[str, Any]) -> list[str]:
    latency = entry.get("latency") or {}
    cases = latency.get("cases") or []
    if not cases:
        return []
    return [f"Measured at export ({latency.get('device')}; real query lengths, no padding): "
            + ", ".join(f"batch {c['batch']} x {c['text']} tokens {c['p50_ms']:.2f} ms p50" for c in cases) + "."]


QUERY_STEPS = {
    "_preprocess": "`preprocess.py`: the query normalised and tokenized (segment Q), as `fbcompress search` does",
    "": "the query encoder: `embedding`, unit length",
}


def render_search_readme(manifest: dict[str, Any]) -> str:
    tower = manifest["tower"]
    models = manifest.get("models", {})
    query = manifest["preprocessing"]["query"]
    dim = manifest["outputs"][0]["shape"][1]
    lines = [
        "# Search bundle: the online query encoder",
        "",
        f"Exported by fbcompress from `{manifest['source'].get('checkpoint')}` ({manifest['source'].get('kind')}, "
        f"weights sha256 `{str(manifest['source'].get('weights_sha256'))[:12]}…`). Every file's sha256 is in "
        "`manifest.json`.",
        "",
        "## The online path of a search",
        "",
        f"1. **Tokenize** the query with `tokenizer/` (BERT WordPiece, lower case): `{query['format']}`, at most "
        f"{query['max_query_len']} wordpieces; `token_type_ids` = {query['token_type_ids']} everywhere (segment Q); "
        "pad a batch only to its longest query.",
        f"2. **Encode**: `{QUERY_ENCODER_FILE}` → `embedding` [B, {dim}], L2-normalised.",
        "3. **Search** the product index of the same embedding space by inner product (= cosine): the FAISS index "
        "and the float16 Parquet shards that `fbcompress index build` writes (`faiss.index`, "
        "`embeddings/*.parquet`: product_id, title, embedding), or any vector database loaded from the shards.",
        "4. **Re-rank** (optional): score (query, product image) for the top K with the cross-encoder bundle "
        "(the scorer: `model.int8.onnx` on CPUs) and order by its match probability.",
        "",
        f"Embedding space: `{tower.get('space')}`. Products must be embedded by the product tower of that space "
        f"(its {tower.get('product_text')} + image): this query encoder never re-encodes the catalogue.",
        "",
        "## Files",
        "",
        "| file | what |",
        "|---|---|",
    ]
    roles = {
        QUERY_ENCODER_FILE: "FP32 query encoder, dynamic batch and query length (ONNX Runtime; the source of the rest)",
        "query_encoder.fp16.onnx": "mixed FP16 graph, the TensorRT FP16 engine's source",
        QUERY_ENCODER_INT8_FILE: "INT8 for ONNX Runtime on CPUs (`fbcompress quantize`, accuracy-guarded)",
        QUERY_ENCODER_INT8_TRT_FILE: "symmetric INT8 Q/DQ graph, the TensorRT INT8 engine's source",
        BUILD_SCRIPT: "builds the TensorRT engines on the serving GPU (`bash build_engines.sh`)",
    }
    listed = [*models, *([BUILD_SCRIPT] if manifest.get("tensorrt_build_kit") else [])]
    for rel in sorted(listed):
        what = roles.get(rel) or ("TensorRT engine, built for the GPU recorded in manifest.json"
                                  if rel.endswith(".plan") else None)
        if what:
            lines.append(f"| `{rel}` | {what} |")
    if "triton" in manifest:
        lines.append("| `triton/` | Triton model repository: query bytes in, embedding out (below) |")
    lines += ["", "Shape profiles (TensorRT, Triton): " + "; ".join(
        f"{p['name']}: batch {p['batch'][0]}-{p['batch'][2]} x query {p['text'][0]}-{p['text'][2]} tokens"
        for p in manifest.get("query_profiles", [])) + "."]
    if QUERY_ENCODER_FILE in models:
        lines += [""] + _latency_lines(models[QUERY_ENCODER_FILE])
    quantization = manifest.get("quantization")
    if quantization:
        lines += ["", f"INT8: {quantization.get('summary', '')}"]
    served = QUERY_ENCODER_INT8_FILE if QUERY_ENCODER_INT8_FILE in models else QUERY_ENCODER_FILE
    lines += [
        "",
        "## In Python",
        "",
        "```python",
        "import numpy as np, onnxruntime as ort",
        "from transformers import BertTokenizerFast",
        "",
        "tokenizer = BertTokenizerFast.from_pretrained(\"tokenizer\")",
        f"session = ort.InferenceSession(\"{served}\")",
        f"batch = tokenizer([\"red floral maxi dress\"], truncation=True, max_length={query['max_query_len']}, "
        "padding=True, return_tensors=\"np\")",
        "feed = {\"input_ids\": batch[\"input_ids\"], \"attention_mask\": batch[\"attention_mask\"],",
        f"        \"token_type_ids\": np.full_like(batch[\"input_ids\"], {query['token_type_ids']})}}",
        "embedding = session.run(None, feed)[0]          # [1, E], unit length",
        "# scores, rows = faiss_index.search(embedding, 10)   # the index from `fbcompress index build`",
        "```",
        "",
        "The same with fbcompress: `fbcompress search --index INDEX --model query_encoder.onnx --query \"...\"`.",
        "",
        *triton_section(manifest, QUERY_STEPS, '--query "red floral maxi dress"'),
    ]
    return "\n".join(lines)
