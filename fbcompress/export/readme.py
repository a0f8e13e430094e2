"""The bundle's README.md for the serving team, rendered from the manifest (so it never disagrees with it)."""

from __future__ import annotations

from typing import Any

from fbcompress.bundle.manifest import parse_patch_spec
from fbcompress.bundle.names import IMAGE_ENCODER_FILE, ONNX_FILE, PREPROCESS_FILE
from fbcompress.bundle.shapes import Profile, format_command, trtexec_command
from fbcompress.bundle.store import (
    MANIFEST,
    ROLE_ENGINE,
    ROLE_ONNX,
    ROLE_ONNX_FP16,
    ROLE_ONNX_INT8_QDQ,
    ROLE_ONNX_ORT,
    TOKENIZER_DIR,
)
from fbcompress.export.triton_readme import triton_section


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-3 else f"{value:.4f}"
    return str(value)


def _model_rows(manifest: dict) -> list[str]:
    rows = ["| file | role | precision | parity (max abs logit diff) | AUC at export | p50 latency at export |",
            "|---|---|---|---|---|---|"]
    for rel, entry in manifest.get("models", {}).items():
        parity = entry.get("parity", {})
        acc = entry.get("accuracy", {})
        latency = entry.get("latency", {})
        timings = "; ".join(f"{c['p50_ms']:.2f} ms @ {c['batch']}x{c['text']}" for c in latency.get("cases", []))
        if timings:
            timings += f" ({latency.get('device', '?')})"
        role = str(entry.get("role", "?"))
        if "copy_of" in entry:
            role += f" (copy of `{entry['copy_of']}`)"
        rows.append(
            f"| `{rel}` | {role} | {entry.get('precision', '?')} | "
            f"{_fmt(parity['max_abs_diff']) if 'max_abs_diff' in parity else '-'} | "
            f"{_fmt(acc['auc']) if 'auc' in acc else '-'} | {timings or '-'} |"
        )
    from fbcompress.evaluation.latency import machine_line

    machine = next((e["latency"]["machine"] for e in manifest.get("models", {}).values() if "latency" in e), None)
    if machine:
        rows += ["", f"Latency machine: {machine_line(machine)} (batch x text = each profile's opt shape; "
                     "use `fbcompress bench` for full latency tables)."]
    return rows


def _io_rows(manifest: dict) -> list[str]:
    rows = ["| tensor | dtype | shape | meaning |", "|---|---|---|---|"]
    for kind in ("inputs", "outputs"):
        for item in manifest.get(kind, []):
            shape = "[" + ", ".join(str(d) for d in item["shape"]) + "]"
            meaning = item.get("description", "")
            rows.append(f"| `{item['name']}` ({kind[:-1]}) | {item['dtype']} | {shape} | {meaning} |")
    return rows


def _preprocessing_snippet(manifest: dict) -> str:
    spec = parse_patch_spec(manifest, MANIFEST)
    name = manifest.get("name", "NAME")
    head = f'''```python
import numpy as np
from PIL import Image
from transformers import BertTokenizerFast

BUNDLE = "exported/{name}"
tokenizer = BertTokenizerFast.from_pretrained(f"{{BUNDLE}}/{TOKENIZER_DIR}")


def text_inputs(texts: list[str]) -> dict[str, np.ndarray]:
    """[CLS] text [SEP], truncated to {spec.max_text_len} wordpieces, right-padded to the batch's longest text."""
    enc = tokenizer(texts, truncation=True, max_length={spec.max_text_len}, padding="longest", return_tensors="np")
    ids = enc["input_ids"].astype(np.int64)
    return {{"input_ids": ids, "attention_mask": enc["attention_mask"].astype(np.int64),
            "token_type_ids": np.zeros_like(ids)}}
'''
    if spec.patch_encoder == "pixels":
        p = spec.image_size // spec.grid
        image = f'''

def image_patches(path: str) -> np.ndarray:
    """RGB {spec.image_size}px square image -> float32 [{spec.num_patches}, {spec.patch_dim}] in [-1, 1]."""
    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    assert img.shape == ({spec.image_size}, {spec.image_size}, 3), "resize/crop to {spec.image_size}px beforehand"
    x = (img / 255.0 - 0.5) / 0.5
    x = x.reshape({spec.grid}, {p}, {spec.grid}, {p}, 3).transpose(0, 2, 1, 3, 4)  # grid row, grid col, py, px, c
    return x.reshape({spec.num_patches}, {spec.patch_dim})
'''
    elif IMAGE_ENCODER_FILE in manifest.get("models", {}):
        image = _image_encoder_snippet(manifest)
    else:
        image = f'''

def image_patches(path: str) -> np.ndarray:
    """Precomputed patch features, float32 [{spec.num_patches}, {spec.patch_dim}] (as used in training)."""
    return np.load(path).astype(np.float32)
'''
    tail = '''

def match_score(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z[:, 1] / z.sum(axis=1)


if __name__ == "__main__":
    texts = ["black leather biker jacket with silver zip"]
    feed = {**text_inputs(texts), "patches": np.stack([image_patches("jacket.png")])}
```'''
    return head + image + tail


def _image_encoder_snippet(manifest: dict) -> str:
    """image_patches() for a features model: the bundle's image_encoder.onnx, as `data features` ran it."""
    encoder = manifest["models"][IMAGE_ENCODER_FILE]["encoder"]
    size, grid = encoder["input_size"], encoder["grid"]
    if encoder["mode"] == "grid":
        prepare = (f'np.asarray(Image.open(path).convert("RGB").resize(({size}, {size}), Image.BICUBIC), '
                   'np.float32)[None]')
    else:
        prepare = (f"np.stack([np.asarray(Image.fromarray(cell).resize(({size}, {size}), Image.BICUBIC), np.float32) "
                   f"for cell in grid_cells(np.asarray(Image.open(path).convert(\"RGB\")), {grid})])")
    cells = "" if encoder["mode"] == "grid" else '''

def grid_cells(img: np.ndarray, grid: int) -> list[np.ndarray]:
    """The grid's cells in row-major order; edges at round(k * side / grid)."""
    rows = np.linspace(0, img.shape[0], grid + 1).round().astype(int)
    cols = np.linspace(0, img.shape[1], grid + 1).round().astype(int)
    return [img[rows[r]:rows[r + 1], cols[c]:cols[c + 1]] for r in range(grid) for c in range(grid)]
'''
    return f'''

import onnxruntime as ort

image_encoder = ort.InferenceSession(f"{{BUNDLE}}/{IMAGE_ENCODER_FILE}", providers=["CPUExecutionProvider"]){cells}


def image_patches(path: str) -> np.ndarray:
    """Patch features float32 [{grid * grid}, {encoder["feature_dim"]}]: offline, once per catalogue image."""
    images = {prepare}
    return image_encoder.run(["patch_features"], {{"images": images}})[0][0]
'''


def _image_encoder_section(manifest: dict) -> list[str]:
    if IMAGE_ENCODER_FILE not in manifest.get("models", {}):
        return []
    entry = manifest["models"][IMAGE_ENCODER_FILE]
    encoder, pre = entry["encoder"], manifest.get("preprocessing", {}).get("image_encoder", {})
    parity = entry.get("parity", {})
    return [
        "## Images: features offline, scoring online",
        "",
        f"This model reads patch features of the image encoder `{encoder['name']}` ({encoder['model_type']}, "
        f"{encoder['mode']} mode, sha256 `{encoder['sha256'][:12]}`), not pixels. Product images are known ahead of "
        f"time, so the work splits in two:",
        "",
        f"* **Offline, per catalogue image** (batch, GPU): `{IMAGE_ENCODER_FILE}` turns images into "
        f"[B, {encoder['grid'] ** 2}, {encoder['feature_dim']}] patch features; store them with the product "
        "(float16 is enough: training read float16). Input: " + str(pre.get("input", "")) + "; "
        + str(pre.get("channels", "")) + "; resize: " + str(pre.get("resize", "")) + ".",
        "* **Online, per request**: the scorer takes the text and the product's stored features as `patches`.",
        "",
        f"Parity of `{IMAGE_ENCODER_FILE}` (ONNX Runtime CPU) vs PyTorch: max relative difference "
        f"{parity.get('max_relative_diff', float('nan')):.2g} (tolerance {parity.get('tolerance', float('nan')):g}). "
        "Features of any other encoder, or of the same one in another mode, are not what the model was trained on.",
        "",
        *_image_encoder_precisions(manifest),
    ]


def _image_encoder_precisions(manifest: dict) -> list[str]:
    """Which reduced-precision encoder files the bundle holds, and why an INT8 one is missing when it is."""
    from fbcompress.bundle.names import IMAGE_ENCODER_FP16_FILE, IMAGE_ENCODER_INT8_FILE

    models = manifest.get("models", {})
    lines = []
    if IMAGE_ENCODER_FP16_FILE in models:
        lines.append(f"* `{IMAGE_ENCODER_FP16_FILE}`: the FP16 graph the FP16 encoder engine is built from.")
    int8 = models.get(IMAGE_ENCODER_INT8_FILE)
    if int8:
        acc = int8.get("accuracy", {})
        auc, fp32_auc = acc.get("auc", float("nan")), acc.get("fp32_auc", float("nan"))
        lines.append(f"* `{IMAGE_ENCODER_INT8_FILE}`: INT8 (QDQ on every Conv), admitted end to end: the FP32 scorer "
                     f"on its features has AUC {auc:.4f} vs {fp32_auc:.4f} on the stored features "
                     f"({acc.get('split', '?')} split).")
    verdict = (manifest.get("quantization") or {}).get("image_encoder") or {}
    if not int8 and verdict.get("status") == "not-shipped":
        lines.append(f"* No INT8 encoder: {verdict.get('reason')}.")
    return [*lines, ""] if lines else []


def _trtexec_section(manifest: dict) -> list[str]:
    spec = parse_patch_spec(manifest, MANIFEST)
    profiles = [Profile.from_dict(p) for p in manifest.get("shape_profiles", [])]
    lines = []
    engines = {rel: e for rel, e in manifest.get("models", {}).items() if e.get("role") == ROLE_ENGINE}
    for rel, entry in engines.items():
        info = entry.get("tensorrt", {})
        lines += [
            f"`{rel}` was built with TensorRT {info.get('version', '?')} (major {info.get('major', '?')}) for "
            f"{info.get('gpu', '?')} (compute capability {info.get('compute_capability', '?')}). It only runs "
            "there; fbcompress refuses it elsewhere. The equivalent trtexec build:",
            "",
            "```bash",
            format_command(info.get("trtexec") or []),
            "```",
            "",
        ]
    kit = manifest.get("tensorrt_build_kit")
    if kit:
        state = ("The engines above were built here; the script is their recorded equivalent."
                 if kit.get("engines_built_here") else
                 f"Engines were not built where this bundle was exported ({kit.get('not_built_because')}).")
        lines += [
            f"**Engine build kit.** {state} On the serving GPU, inside the bundle, build every engine with:",
            "",
            "```bash",
            f"bash {kit['script']}            # or: bash {kit['script']} fp16",
            "```",
            "",
            "It runs one strongly typed trtexec build per precision with the shape profiles above "
            "(`TRTEXEC=/path/to/trtexec` if it is not on PATH):",
            "",
            "| precision | built from | engine |",
            "|---|---|---|",
            *[f"| {e['precision']} | `{e['onnx']}` | `{e['plan']}` |" for e in kit.get("engines", [])],
            "",
            "Engines built by the script serve as they are (Triton, any TensorRT runtime). For `fbcompress eval` or "
            "`bench` on them, build with `fbcompress export --target tensorrt` on that GPU instead: it records the "
            "TensorRT version and GPU that fbcompress checks before running an engine.",
            "",
        ]
        return lines
    sources = {rel: e for rel, e in manifest.get("models", {}).items()
               if e.get("role") in (ROLE_ONNX, ROLE_ONNX_FP16, ROLE_ONNX_INT8_QDQ)}
    built_from = {e.get("tensorrt", {}).get("onnx_source") for e in engines.values()}
    for rel, entry in sources.items():
        if rel in built_from or not profiles:
            continue
        precision = entry.get("precision", "fp32")
        cmd = trtexec_command(rel, f"model.{precision}.plan", profiles, spec, "timing.cache",
                              manifest.get("recipe", {}).get("export", {}).get("workspace_mib"))
        lines += [f"Build an engine from `{rel}` ({precision}) on the serving GPU:", "", "```bash",
                  format_command(cmd), "```", ""]
    return lines


SCORER_STEPS = {
    "_preprocess": "`preprocess.py`: `[CLS] text [SEP]` WordPiece ids and the image's patches, as training made them",
    "": "the scorer: `logits` [2]",
    "_postprocess": "the match score `softmax(logits)[1]`",
}


def render_readme(manifest: dict) -> str:
    """Markdown for people: what is in the bundle, how to make inputs, how to run it in ORT, TensorRT, Triton."""
    spec = parse_patch_spec(manifest, MANIFEST)
    source = manifest.get("source", {})
    name = manifest.get("name", "NAME")
    profiles = manifest.get("shape_profiles", [])
    ort_file = next((rel for rel, e in manifest.get("models", {}).items() if e.get("role") == ROLE_ONNX_ORT),
                    ONNX_FILE)
    out: list[str] = [
        f"# FashionBERT scoring bundle `{name}`",
        "",
        "Scores how well a product text matches a product image: `logits` [B, 2], match score = "
        "`softmax(logits)[:, 1]`.",
        f"Exported by fbcompress {manifest.get('fbcompress_version', '?')} on {manifest.get('updated_at', '?')} from "
        f"the {source.get('kind', '?')} checkpoint `{source.get('checkpoint', '?')}` (weights sha256 "
        f"`{source.get('weights_sha256', '?')}`).",
        "",
        "## Files",
        "",
        *_model_rows(manifest),
        "",
        "`manifest.json` lists every file with its sha256 and role; fbcompress refuses any file whose hash no longer "
        "matches. Check by hand with `python -c \"import json,hashlib,sys; m=json.load(open('manifest.json')); "
        "[print(f, 'OK' if hashlib.sha256(open(f,'rb').read()).hexdigest()==e['sha256'] else 'CHANGED') "
        "for f,e in m['files'].items()]\"` inside the bundle.",
        "",
        "`model.onnx` is the portable FP32 graph (standard ONNX ops: ONNX Runtime, TensorRT, quantization all start "
        f"here). `{ort_file}` is the same model with ONNX Runtime's transformer fusions (runs in ONNX Runtime only).",
        "",
        "## Inputs and outputs",
        "",
        *_io_rows(manifest),
        "",
        f"`batch` and `text` are dynamic: any batch size, text length 1..{manifest.get('max_text_positions', '?')} "
        f"(the tokenizer emits at most {spec.max_text_len}). Pad each batch only to its own longest text: padding is "
        "masked, so a text scores the same padded or not.",
        "",
        "## Making inputs from an image and a text",
        "",
        *([f"`{PREPROCESS_FILE}` does all of this, generated from the code training runs (numpy, Pillow and "
           "`tokenizers` only): `Preprocessor(BUNDLE).inputs(texts, image_bytes)` returns the four inputs. What it "
           "does, for those who write their own:", ""]
          if manifest.get("preprocessing", {}).get("module") == PREPROCESS_FILE else []),
    ]
    if spec.patch_encoder == "pixels":
        p = spec.image_size // spec.grid
        out += [
            f"* Image: RGB, exactly {spec.image_size}x{spec.image_size} px (no resize is done for you), pixels "
            f"/ 255 then (x - 0.5) / 0.5, cut into a {spec.grid}x{spec.grid} grid of {p}x{p} patches in row-major "
            f"order, each patch flattened (row, column, channel) into {spec.patch_dim} values.",
        ]
    else:
        made = f" (from `{IMAGE_ENCODER_FILE}`, below)" if IMAGE_ENCODER_FILE in manifest.get("models", {}) else ""
        out += [f"* Image: {spec.num_patches} precomputed patch features of {spec.patch_dim} floats each{made}."]
    out += [
        f"* Text: BERT WordPiece tokenizer in `{TOKENIZER_DIR}/`, `[CLS] text [SEP]`, at most {spec.max_text_len} "
        "wordpieces, right-padded with id 0; `token_type_ids` all 0.",
        "",
        _preprocessing_snippet(manifest),
        "",
        *_image_encoder_section(manifest),
        "## ONNX Runtime",
        "",
        "```python",
        "import onnxruntime as ort",
        "",
        f'session = ort.InferenceSession(f"{{BUNDLE}}/{ort_file}",',
        '                               providers=["CUDAExecutionProvider", "CPUExecutionProvider"])',
        'logits = session.run(["logits"], feed)[0]',
        "print(match_score(logits))",
        "```",
        "",
        f"With fbcompress: `fbcompress eval --model exported/{name}/model.onnx --data DATA [--device cpu|cuda]`.",
        "",
        "## TensorRT",
        "",
        "Engines are strongly typed: precision comes from the ONNX file (`model.fp16.onnx` keeps LayerNorm, Softmax "
        "and the logits layer in FP32; `model.int8.trt.onnx` has INT8 Q/DQ on the GEMM inputs and the same FP16 "
        "policy elsewhere). Shape profiles (min/opt/max):",
        "",
        "| profile | batch | text |",
        "|---|---|---|",
        *[f"| {p['name']} | {' / '.join(map(str, p['batch']))} | {' / '.join(map(str, p['text']))} |"
          for p in profiles],
        "",
        *_trtexec_section(manifest),
        "Run engines with `fbcompress eval --model exported/NAME/model.fp16.plan --device cuda` or any TensorRT "
        "runtime: set the optimisation profile that fits the batch, `set_input_shape` per call, then execute.",
        "",
    ]
    image = "--patches product.npy" if spec.patch_encoder == "features" else "--image shirt.jpg"
    out += triton_section(manifest, SCORER_STEPS, f'--text "a red striped shirt" {image}')
    triton = manifest.get("triton") or {}
    out += [
        f"The scorer `{triton['model_name']}` can also be called alone with the inputs above (HTTP/gRPC, "
        "`tritonclient`), e.g. by a client that keeps products' patches.",
    ] if triton else []
    encoder = triton.get("image_encoder")
    if encoder:
        out += [
            "",
            f"Model `{encoder['model_name']}` ({encoder['platform']}, max_batch_size {encoder['max_batch_size']}) "
            f"is the image encoder, for the offline pass over catalogue images: input `images` as described "
            "above, output `patch_features`, which the product's stored features (the scorer's `patches`) are.",
        ]
    out.append("")
    return "\n".join(out)
