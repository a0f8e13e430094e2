"""`fbcompress quickstart`: the whole pipeline on the embedded default, one progress display, one report.

Why stages call the public commands (through Click, in this process) instead of library functions: the quickstart
is the documented contract in action, so a user can re-run any stage by hand with the command it prints, and a
stage's output is exactly what that command writes.

Reuse: every stage has a fingerprint (its command line, the resolved recipe, the package version and the
fingerprints of the stages it reads from). A stage whose recorded fingerprint matches and whose outputs exist is
skipped; `--force` redoes everything. A training stage that was interrupted (no record yet) resumes from its last
complete checkpoint; one whose inputs changed starts over. The state file is written atomically after each stage.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click

from fbcompress import __version__
from fbcompress.artifacts import atomic_write_json
from fbcompress.errors import FbError

STATE_FILE = "quickstart-state.json"
EXIT_INTERRUPTED = 130  # what the CLI exits with on Ctrl-C


class QuickstartInterrupted(Exception):
    """Ctrl-C during a stage: completed stages are recorded; a re-run continues from the interrupted one."""


@dataclass
class Stage:
    """One step of the pipeline: a command line, the files it must leave behind, the stages it reads from."""

    name: str
    title: str
    args: list[str]
    outputs: list[Path]
    after: list[str] = field(default_factory=list)
    resumable: bool = False  # a training stage: --resume when interrupted, --force when its inputs changed
    may_fail: bool = False  # a gate (quantize guard, check): a failure is a result, reported, not a crash
    sections: tuple[str, ...] = ()  # the recipe sections the stage reads: only they enter its fingerprint
    skip_reason: Callable[[], str | None] = lambda: None


@dataclass
class StageResult:
    name: str
    status: str  # ran | reused | failed | skipped
    seconds: float
    exit_code: int = 0
    reason: str = ""
    command: str = ""


def tensorrt_unavailable() -> str | None:
    """Why TensorRT engines cannot be built here, or None when they can."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip package 'tensorrt')"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None


def build_stages(recipe_ref: str, overrides: tuple[str, ...], out: Path, bundle: Path) -> list[Stage]:
    """The quickstart pipeline as a list of command lines (recipe_ref: a recipe name or path)."""
    data, teacher, student = out / "data", out / "teacher", out / "student"
    evals = out / "eval"
    sets = [arg for text in overrides for arg in ("--set", text)]
    recipe = ["--recipe", recipe_ref, *sets]
    onnx, int8 = bundle / "model.onnx", bundle / "model.int8.onnx"
    stages = [
        Stage("data", "synthetic catalogue", ["data", "synth", *recipe, "--out", str(data)],
              [data / "dataset.json"], sections=("data",)),
        Stage("teacher", "teacher (MLM + MPM + ITA, adaptive loss)",
              ["train-teacher", *recipe, "--data", str(data), "--out", str(teacher)],
              [teacher / "model.safetensors"], ["data"], resumable=True, sections=("teacher", "train")),
        Stage("teacher-eval", "eval teacher",
              ["eval", "--model", str(teacher), "--data", str(data), "--json", str(evals / "teacher.json")],
              [evals / "teacher.json"], ["teacher"]),
        Stage("student", "distill 2-layer VSL student",
              ["distill", *recipe, "--teacher", str(teacher), "--data", str(data), "--out", str(student)],
              [student / "model.safetensors"], ["teacher"], resumable=True,
              sections=("train", "distill")),
        Stage("student-eval", "eval student",
              ["eval", "--model", str(student), "--data", str(data), "--json", str(evals / "student.json")],
              [evals / "student.json"], ["student"]),
        Stage("onnx", "export ONNX bundle",
              ["export", "--model", str(student), "--target", "onnx", "--out", str(bundle), *recipe,
               "--data", str(data), "--force", "--json", str(evals / "export.json")],
              [onnx, bundle / "manifest.json"], ["student"], sections=("export",)),
        Stage("onnx-eval", "eval ONNX (ONNX Runtime)",
              ["eval", "--model", str(onnx), "--data", str(data), "--json", str(evals / "onnx.json")],
              [evals / "onnx.json"], ["onnx"]),
        Stage("int8", "INT8 quantization with accuracy guard",
              ["quantize", "--model", str(onnx), "--data", str(data), "--out", str(bundle), *recipe,
               "--json", str(evals / "quantize.json")],
              [int8], ["onnx"], may_fail=True, sections=("quantize",)),
        Stage("tensorrt", "TensorRT engines",
              ["export", "--model", str(student), "--target", "tensorrt", "--out", str(bundle), *recipe],
              [bundle / "manifest.json"], ["onnx", "int8"], may_fail=True, skip_reason=tensorrt_unavailable,
              sections=("export",)),
        Stage("bench", "latency benchmark",
              ["bench", "--model", str(teacher), "--model", str(student), "--model", str(onnx), "--model", str(int8),
               "--label", "teacher", "--label", "student", "--label", "student-onnx", "--label", "student-int8",
               "--batch-sizes", "1,8,32", "--text-lengths", "8,16,32,64",
               "--json", str(out / "bench.json"), "--md", str(out / "bench.md"), "--plots", str(out / "plots")],
              [out / "bench.json"], ["teacher", "student", "onnx", "int8"]),
        Stage("check", "release gate: INT8 student vs teacher",
              ["check", "--teacher", str(teacher), "--candidate", str(int8), "--data", str(data), *recipe,
               "--teacher-eval", str(evals / "teacher.json"), "--json", str(evals / "check.json")],
              [evals / "check.json"], ["teacher-eval", "int8"], may_fail=True, sections=("check",)),
    ]
    return stages


def _fingerprint(stage: Stage, recipe: dict, upstream: dict[str, str]) -> str:
    """What a stage's result depends on: its own command line (the recipe flags aside), the recipe sections it
    reads, the package version and each stage it reads from (by run token, see run_quickstart). So a changed
    quantize tolerance re-runs quantize and what follows it, never the teacher."""
    args, skip = [], False
    for arg in stage.args:
        if skip:
            skip = False
        elif arg in ("--recipe", "--set"):
            skip = True
        else:
            args.append(arg)
    payload = {
        "stage": stage.name,
        "args": args,
        "recipe": {name: recipe.get(name) for name in stage.sections},
        "version": __version__,
        "after": {name: upstream.get(name, "") for name in stage.after},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _read_state(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}  # a damaged state file only costs reuse, never correctness
    return state if isinstance(state, dict) else {}


def _invoke(args: list[str]) -> int:
    """Run one fbcompress command in this process; its exit code (0 on success)."""
    from fbcompress.cli import main

    try:
        main.main(args=args, prog_name="fbcompress", standalone_mode=False)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return 0


def run_quickstart(
    recipe_ref: str,
    overrides: tuple[str, ...],
    out: Path,
    bundle: Path,
    force: bool = False,
    invoke: Callable[[list[str]], int] = _invoke,
) -> list[StageResult]:
    """Run (or reuse) every stage in order; a stage whose input failed is skipped with that reason."""
    from tqdm.auto import tqdm

    from fbcompress.cli import _recipe

    recipe = _recipe(recipe_ref, overrides).model_dump(mode="json")
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_FILE
    state = {} if force else _read_state(state_path)
    stages = build_stages(recipe_ref, overrides, out, bundle)
    # A stage's run token is its fingerprint plus when it last ran: a stage that re-runs gets a new token, so
    # everything that reads its output re-runs too, even if the stage's own inputs were unchanged.
    tokens: dict[str, str] = {}
    results: list[StageResult] = []
    broken: dict[str, str] = {}
    bar = tqdm(stages, desc="quickstart", unit="stage", position=0, leave=True)
    for stage in bar:
        bar.set_postfix_str(stage.name)
        fp = _fingerprint(stage, recipe, tokens)
        record = state.get(stage.name, {})
        tokens[stage.name] = f"{fp}@{record.get('ran_at', '')}" if record.get("fingerprint") == fp else f"{fp}@new"
        command = "fbcompress " + " ".join(stage.args)
        blocked = [name for name in stage.after if name in broken]
        if blocked:
            reason = f"needs {blocked[0]}: {broken[blocked[0]]}"
            results.append(StageResult(stage.name, "skipped", 0.0, reason=reason, command=command))
            broken[stage.name] = reason
            continue
        skip = stage.skip_reason()
        if skip:
            tqdm.write(f"[{stage.name}] skipped: {skip}")
            results.append(StageResult(stage.name, "skipped", 0.0, reason=skip, command=command))
            broken[stage.name] = skip
            continue
        if record.get("fingerprint") == fp:
            code = int(record.get("exit_code", 0))
            if code == 0 and all(p.exists() for p in stage.outputs):
                seconds = float(record.get("seconds", 0.0))  # what the run that made it took
                results.append(StageResult(stage.name, "reused", seconds, reason="inputs unchanged", command=command))
                continue
            if code != 0 and stage.may_fail:  # a gate that failed on these same inputs fails again: reuse
                results.append(StageResult(stage.name, "failed", 0.0, code, f"exit code {code} (reused)", command))
                broken[stage.name] = f"exit code {code}"
                continue
        args = list(stage.args)
        if stage.resumable:
            # Interrupted before (no record): continue from the last complete checkpoint. Inputs changed
            # (a record with another fingerprint) or --force: start over.
            args.append("--force" if (force or record) else "--resume")
        tqdm.write(f"[{stage.name}] {stage.title}: fbcompress {' '.join(args)}")
        start = time.perf_counter()
        code = invoke(args)
        seconds = time.perf_counter() - start
        if code == EXIT_INTERRUPTED:  # Ctrl-C inside a stage stops the whole pipeline, not just that stage
            bar.close()
            raise QuickstartInterrupted(stage.name)
        if code == 0 and not all(p.exists() for p in stage.outputs):
            code = 1
        status = "ran" if code == 0 else "failed"
        reason = "" if code == 0 else f"exit code {code}"
        results.append(StageResult(stage.name, status, seconds, code, reason, command))
        ran_at = time.strftime("%Y-%m-%dT%H:%M:%S") + f".{time.time_ns() % 10**9:09d}"
        tokens[stage.name] = f"{fp}@{ran_at}"
        if code == 0 or stage.may_fail:
            state[stage.name] = {"fingerprint": fp, "exit_code": code, "seconds": round(seconds, 1), "ran_at": ran_at}
            atomic_write_json(state_path, state)
        if code != 0:
            broken[stage.name] = reason
            if not stage.may_fail:
                tqdm.write(f"[{stage.name}] failed ({reason}); later stages that need it are skipped")
    bar.close()
    return results


def require_clean_out(out: Path) -> None:
    """Refuse an --out that is a file or holds something other than a quickstart run."""
    if out.exists() and not out.is_dir():
        raise FbError(f"--out {out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / STATE_FILE).exists() and not (out / "data").exists():
        raise FbError(f"--out {out} holds other files; pick an empty or quickstart directory")
