"""The bundle README's Triton section (scoring and search bundles alike): how a serving team serves `triton/` and
calls it, which scorer backend to pick, and what of it a real server has run versus what was only checked.

Why it says "served for real" only of the Python-backend scorer: fbcompress's tests start the nvidia-pytriton
wheel's tritonserver on this repository and compare its answers with `fbcompress eval`; that wheel carries the
Python backend but neither the ONNX Runtime nor the TensorRT backend, so those configs are checked against Triton's
schema and the model files, never loaded.
"""

from __future__ import annotations

from typing import Any

from fbcompress.bundle.names import SERVE_SCRIPT_FILE, SERVING_REQUIREMENTS_FILE, TRITON_CLIENT_FILE

PYTHON_SCORER = "python"


def _model_rows(triton: dict[str, Any], what: dict[str, str]) -> list[str]:
    ensemble = triton["ensemble"]
    rows = ["| model | backend | does |", "|---|---|---|",
            f"| `{ensemble['model_name']}` | ensemble | "
            + ", ".join(f"`{k}` {v}" for k, v in ensemble["inputs"].items()) + " → "
            + ", ".join(f"`{k}` {v}" for k, v in ensemble["outputs"].items()) + " |"]
    for step in ensemble["steps"]:
        backend = triton["platform"] if step == triton["model_name"] else "python"
        rows.append(f"| `{step}` | {backend} | {what.get(step.removeprefix(triton['model_name']), '')} |")
    return rows


def triton_section(manifest: dict[str, Any], what: dict[str, str], example: str) -> list[str]:
    """Markdown lines for `## Triton Inference Server`. `what`: a step's job by its suffix ("" for the model itself,
    "_preprocess", "_postprocess"); `example`: the arguments of one triton_client.py call."""
    triton = manifest.get("triton")
    if not triton or "ensemble" not in triton:
        return ["## Triton Inference Server", "",
                "Not generated yet: `fbcompress export --model CKPT --target triton --out BUNDLE` (add "
                "`--triton-kind cpu --triton-scorer python` for a CPU server with only the Python backend).", ""]
    ensemble = triton["ensemble"]
    batching = ensemble.get("dynamic_batching", {})
    served_here = triton.get("scorer_backend") == PYTHON_SCORER
    out = [
        "## Triton Inference Server",
        "",
        f"`triton/` is a Triton model repository. Clients call `{ensemble['model_name']}` with raw inputs; the server "
        "runs the rest, with the preprocessing training ran (`preprocess.py`), so nothing is copied into the client:",
        "",
        *_model_rows(triton, what),
        "",
        f"Max batch {ensemble['max_batch_size']}; dynamic batching on every model ("
        + (f"preferred sizes {batching['preferred_batch_size']}, " if batching.get("preferred_batch_size") else "")
        + f"queue delay {batching.get('max_queue_delay_microseconds', '?')} µs). Text lengths vary (each input "
        "costs its real length): the `python` scorer takes ragged batches (requests of any length, padded inside to "
        "the longest), while Triton's ONNX Runtime and TensorRT backends merge only requests of equal shape.",
        "",
        "### Serve and call it on a CPU: three commands",
        "",
    ]
    if served_here:
        out += [
            "```bash",
            f"python3 -m venv serve && serve/bin/pip install -r {SERVING_REQUIREMENTS_FILE}",
            f"serve/bin/python {SERVE_SCRIPT_FILE}     # tritonserver on triton/: HTTP :8000, gRPC :8001 (--help)",
            f"serve/bin/python {TRITON_CLIENT_FILE} --url 127.0.0.1:8000 {example}",
            "```",
            "",
            f"`{SERVING_REQUIREMENTS_FILE}` installs the `nvidia-pytriton` wheel, which carries a real `tritonserver` "
            "with its Python backend (Linux x86-64 with glibc ≥ 2.35; numpy < 2), and what the Python models import; "
            f"`{SERVE_SCRIPT_FILE}` puts the wheel's Python-backend stub in place and starts the server (SIGTERM or "
            f"Ctrl-C stops it). `{TRITON_CLIENT_FILE}` speaks HTTP, or gRPC with `--grpc` (port 8001); it prints one "
            "JSON line per request, `{\"error\": ...}` when the server refused it (missing or mistyped input, an "
            "image that does not decode, a text over 8,192 bytes, an empty text).",
        ]
    else:
        out += [
            f"This repository's model `{triton['model_name']}` runs on Triton's `{triton['platform']}` backend, which "
            "the `nvidia-pytriton` wheel does not carry: serve it with the tritonserver container below. For a CPU "
            "server from pip, export again with `--target triton --triton-kind cpu --triton-scorer python`; then:",
            "",
            "```bash",
            f"python3 -m venv serve && serve/bin/pip install -r {SERVING_REQUIREMENTS_FILE}",
            f"serve/bin/python {SERVE_SCRIPT_FILE}",
            f"serve/bin/python {TRITON_CLIENT_FILE} --url 127.0.0.1:8000 {example}",
            "```",
        ]
    out += [
        "",
        "### On a GPU, or with Triton's ONNX Runtime backend: the tritonserver container",
        "",
        "```bash",
        "docker run --gpus all --rm -p 8000:8000 -p 8001:8001 -v $PWD:/bundle \\",
        "    nvcr.io/nvidia/tritonserver:<release>-py3 \\",
        '    bash -c "pip install tokenizers pillow onnxruntime && tritonserver --model-repository=/bundle/triton"',
        "```",
        "",
        "The Python models need `tokenizers` and Pillow in the container's Python (and `onnxruntime` for a Python "
        "scorer); bake them into your image for production. TensorRT engines run only on the GPU model and "
        "TensorRT version they were built with (`manifest.json`).",
        "",
        "### Which scorer: `fbcompress export --target triton --triton-scorer ...`",
        "",
        "- `onnxruntime` (default): the model on Triton's own backend: `tensorrt_plan` when the bundle has engines "
        "(GPU), else `onnxruntime_onnx` (`--triton-kind gpu` or `cpu`). The production choice: no Python in the "
        "model's hot path.",
        "- `python`: the same ONNX file in ONNX Runtime inside Triton's Python backend (CPU). For Triton builds with "
        "only the Python backend (the pip wheel above, CI); the ensemble and its answers are the same, each request "
        "pays the Python backend's inter-process copy.",
        "- On CPUs (`--triton-kind cpu`, or the `python` scorer) `--precision int8` serves `fbcompress quantize`'s "
        "accuracy-guarded INT8 ONNX graph, as the quickstart ships it; engines (`--precision fp16|int8` on "
        "`--triton-kind gpu`) are for GPUs.",
        "",
        "### What has been proven",
        "",
        "- **Served for real** (fbcompress's tests, every CI run): this ensemble with the `python` scorer on the "
        "nvidia-pytriton 0.7.0 wheel's tritonserver, CPU, over HTTP and gRPC: scores (and query embeddings) equal "
        "to `fbcompress eval`'s within 1e-5; bad requests get an error response and the server keeps serving.",
        "- **Checked, not served**: the `onnxruntime_onnx` and `tensorrt_plan` configs: parsed with Triton's "
        "model-config schema, inputs, outputs and dtypes checked against the model file, max batch against the "
        "shape profiles. That wheel has neither backend.",
        f"- This bundle's scorer: **{triton['platform']}**"
        + (" (served for real)." if served_here else " (checked, not served)."),
        "",
    ]
    return out
