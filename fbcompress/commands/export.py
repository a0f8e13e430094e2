"""`fbcompress export`: a checkpoint into a serving bundle (ONNX, TensorRT engines and their build kit, Triton)."""

from __future__ import annotations

from pathlib import Path

import click

from fbcompress.commands.options import (
    data_option,
    device_option,
    echo_log,
    json_option,
    out_option,
    progress_wanted,
    recipe_option,
    set_option,
    split_option,
)
from fbcompress.core.errors import FbError


@click.command("export")
@click.option("--model", "-m", "model_dir", required=True, type=click.Path(path_type=Path),
              help="checkpoint dir to export: a teacher or student (the scorer), or a retriever / query encoder (the "
                   "search bundle: query_encoder.onnx)")
@click.option("--target", "-t", required=True, type=click.Choice(["onnx", "tensorrt", "triton"]),
              help="onnx: model.onnx (+ ORT-fused); tensorrt: engines; triton: model repository")
@out_option("bundle dir, e.g. exported/NAME (updated in place: other stages' files are kept)")
@recipe_option("recipe for export.* (profiles, precisions, opset); default: the checkpoint's recipe")
@set_option("--set export.parity_tolerance=1e-5")
@click.option("--opset", type=click.IntRange(min=17), help="ONNX opset (default: recipe export.opset, 17)")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]),
              help="tensorrt: the one engine to build (default: recipe export.precisions); triton: which engine "
                   "(GPU), or on CPUs int8: quantize's INT8 ONNX graph")
@data_option("dataset dir: measure AUC of the exported model vs the checkpoint and record it", required=False)
@split_option()
@click.option("--image-encoder", type=click.Path(path_type=Path),
              help="models that read patch features: the encoder dir `data features` used, exported as "
                   "image_encoder.onnx (default: the dir recorded in --data's dataset.json)")
@click.option("--exporter", default="torchscript", show_default=True, type=click.Choice(["torchscript", "dynamo"]),
              help="torch.onnx exporter (torchscript: the attention subgraph ONNX Runtime fuses)")
@click.option("--timing-cache", type=click.Path(path_type=Path),
              help="TensorRT timing cache file to reuse and update (default: the bundle's timing.cache)")
@click.option("--triton-name", default="fashionbert", show_default=True, help="Triton model name")
@click.option("--triton-scorer", default="onnxruntime", show_default=True, type=click.Choice(["onnxruntime", "python"]),
              help="triton: the scorer on Triton's ONNX Runtime (or TensorRT) backend, or ONNX Runtime inside the "
                   "Python backend (CPU; Triton builds without the ONNX Runtime backend, the test server)")
@click.option("--triton-kind", default="gpu", show_default=True, type=click.Choice(["gpu", "cpu"]),
              help="Triton instance kind")
@device_option("cuda", "GPU for TensorRT engines (cuda or cuda:N)")
@click.option("--engines", default="auto", show_default=True, type=click.Choice(["auto", "require"]),
              help="tensorrt: auto builds engines where TensorRT and a GPU are, else writes the build kit alone; "
                   "require fails (exit 2, nothing written) without them")
@click.option("--latency-runs", default=100, show_default=True, type=click.IntRange(min=0),
              help="timed runs per profile's opt shape recorded in the manifest (0: skip)")
@click.option("--force", is_flag=True, help="replace a bundle exported from another checkpoint")
@json_option()
def export_cmd(model_dir: Path, target: str, out: Path, recipe: str | None, overrides: tuple[str, ...],
               opset: int | None, precision: str | None, data_dir: Path | None, split: str,
               image_encoder: Path | None, exporter: str,
               timing_cache: Path | None, triton_name: str, triton_scorer: str, triton_kind: str, device: str,
               engines: str,
               latency_runs: int, force: bool, json_path: str | None) -> None:
    """Export a checkpoint into a serving bundle: ONNX, TensorRT engines, Triton repository + manifest + README.

    \b
    The ONNX export fails if ONNX Runtime's logits differ from PyTorch's by more than export.parity_tolerance
    (1e-4) at batch 1/8 and text length 1/8/64, or (with --data) if its AUC differs by more than
    export.max_auc_drop. --target tensorrt always writes the engine build kit (the TensorRT-ready ONNX per
    precision, the shape profiles in manifest.json, build_engines.sh with one trtexec line per precision) and
    builds the engines too where the tensorrt package and an NVIDIA GPU are; --engines require makes their
    absence an error (one line, exit 2, nothing written).

    \b
    Examples:
      fbcompress export --model runs/qs/student --target onnx --out exported/qs --data runs/qs/data
      fbcompress export --model runs/qs/student --target tensorrt --precision fp16 --out exported/qs
      fbcompress export --model runs/qs/student --target tensorrt --engines require --device cuda:1 --out exported/qs
      fbcompress export --model runs/qs/student --target triton --out exported/qs --json exported/qs-triton.json
      fbcompress export -m runs/qs/student -t triton --precision int8 --triton-scorer python -o exported/qs  # CPU
      fbcompress eval --model exported/qs/model.onnx --data runs/qs/data
      fbcompress export --model runs/qs/query-encoder --target onnx --out exported/qs/search
    """
    from fbcompress.core.artifacts import write_json_output
    from fbcompress.export.pipeline import ExportOptions, run_export

    if not model_dir.exists():
        raise FbError(f"model not found: {model_dir}")
    if not model_dir.is_dir():
        raise FbError(f"--model {model_dir} is not a checkpoint directory (export starts from a checkpoint)")
    from fbcompress.recipes import resolve_section

    section, source = resolve_section("export", recipe, overrides, [model_dir])
    opts = ExportOptions(
        model_dir=model_dir, out=out, target=target, export=section, recipe_source=source, opset=opset,
        precision=precision, exporter=exporter, data_dir=data_dir, image_encoder=image_encoder, split=split,
        force=force,
        timing_cache=timing_cache, triton_name=triton_name, triton_kind=triton_kind, triton_scorer=triton_scorer,
        device=device,
        engines=engines, latency_runs=latency_runs, progress=progress_wanted(), log=echo_log,
    )
    if _is_dual_tower(model_dir):
        from fbcompress.export.search_bundle import run_search_export

        summary = run_search_export(opts)
    else:
        summary = run_export(opts)
    click.echo(format_summary(summary), err=json_path == "-")
    if json_path:
        write_json_output(json_path, summary)


def _is_dual_tower(model_dir: Path) -> bool:
    """A retriever or query-encoder checkpoint: exported as a search bundle (the query encoder)."""
    from fbcompress.modeling.checkpoint import open_checkpoint
    from fbcompress.modeling.dual_tower import is_tower_config

    return is_tower_config(open_checkpoint(model_dir).config)


def format_summary(summary: dict) -> str:
    rows = [("bundle", summary["bundle"]), ("target", summary["target"])]
    for rel, parity in summary.get("parity", {}).items():
        if "max_abs_diff" in parity:
            what = "embedding" if summary.get("kind") == "search" else "logit"
            rows.append((f"parity {rel}", f"max |{what} diff| {parity['max_abs_diff']:.2e}"))
    for rel, acc in summary.get("accuracy", {}).items():
        rows.append((f"AUC {rel}", f"{acc['auc']:.4f} (checkpoint {acc['checkpoint_auc']:.4f}, "
                                   f"drop {acc['auc_drop']:+.4f})"))
    if summary.get("fusions") is not None:
        fused = ", ".join(f"{op} x{n}" for op, n in summary["fusions"].items()) or "none"
        rows.append(("ORT fusions", fused))
    kit = summary.get("tensorrt_build_kit")
    if kit:
        state = "built here" if kit["engines_built_here"] else f"not built here ({kit['not_built_because']})"
        rows.append(("engines", f"{', '.join(e['plan'] for e in kit['engines'])}: {state}; "
                                f"build kit {kit['script']}"))
    if "triton" in summary:
        rows.append(("triton", f"{summary['triton']['model_name']} ({summary['triton']['platform']})"))
    rows.append(("written", ", ".join(summary["files_written"])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
