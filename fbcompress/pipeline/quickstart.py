"""`fbcompress quickstart`: the whole pipeline on the embedded default, one progress display, one report.

Why stages call the public commands (through Click, in this process) instead of library functions: the quickstart
is the documented contract in action, so a user can re-run any stage by hand with the command it prints, and a
stage's output is exactly what that command writes.

Reuse: every stage has a fingerprint (its command line, the resolved recipe, the package version and the
fingerprints of the stages it reads from). A stage whose recorded fingerprint matches and whose outputs exist is
skipped; `--force` redoes everything. A training stage that was interrupted (no record yet) resumes from its last
complete checkpoint; one whose inputs changed starts over. The state file is written atomically after each stage.

The student ladder (recipe `quickstart.students`, fastest first): width trades accuracy for latency, and which width
keeps the release gate depends on how well the teacher learned, so the pipeline tries students in order (distill,
eval, export, INT8, check) and ships the first that passes; `--all-students` measures all of them for the report's
Pareto table. Only then do the shipped bundle's TensorRT engines and the benchmark run.
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
from fbcompress.bundle.names import (
    INT8_CPU_FILE,
    ONNX_FILE,
    QUERY_ENCODER_FILE,
    QUERY_ENCODER_INT8_FILE,
    SEARCH_SUBDIR,
)
from fbcompress.core.artifacts import atomic_write_json, ensure_output_dir
from fbcompress.core.errors import FbError
from fbcompress.recipes import StudentShape, load_recipe_or_defaults, without_later_defaults

STATE_FILE = "quickstart-state.json"
EXIT_INTERRUPTED = 130  # what the CLI exits with on Ctrl-C


class QuickstartInterrupted(Exception):
    """Ctrl-C during a stage: completed stages are recorded; a re-run continues from the interrupted one."""


@dataclass
class Stage:
    """One step of the pipeline: a command line, the files it must leave behind, the stages it reads from."""

    name: str
    title: str
    args: list[str]  # the public fbcompress command line; empty for an action
    outputs: list[Path]
    after: list[str] = field(default_factory=list)
    resumable: bool = False  # a training stage: --resume when interrupted, --force when its inputs changed
    gate: bool = False  # a gate (quantize guard, check, engines): a failure is a result, reported, not a crash
    sections: tuple[str, ...] = ()  # the recipe sections the stage reads: only they enter its fingerprint
    skip_reason: Callable[[], str | None] = lambda: None
    student: str | None = None  # the rung of the student ladder this stage belongs to
    overrides: tuple[str, ...] = ()  # the rung's own --set values (its width): part of the fingerprint
    action: Callable[[], None] | None = None  # an in-process step that is not a command (shipping the bundle)
    action_text: str = ""  # what the action does, for the log, the report and the fingerprint

    @property
    def kind(self) -> str:
        """"command" (a public command), "gate" (a command whose failure is a verdict) or "action"."""
        return "action" if self.action is not None else "gate" if self.gate else "command"


@dataclass
class StageResult:
    name: str
    status: str  # ran | reused | failed | skipped
    seconds: float
    exit_code: int = 0
    reason: str = ""
    command: str = ""
    student: str | None = None
    gate: bool = False  # the stage was a gate: its failure is a verdict (exit 1 when nothing shipped), not a crash


def tensorrt_unavailable() -> str | None:
    """Why TensorRT engines cannot be built here, or None when they can."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip package 'tensorrt')"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None


@dataclass(frozen=True)
class Layout:
    """Where a quickstart run keeps things: one checkpoint, eval dir and bundle per student of the ladder."""

    out: Path
    bundle: Path  # the shipped hand-off bundle

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def teacher(self) -> Path:
        return self.out / "teacher"

    @property
    def teacher_eval(self) -> Path:
        return self.out / "eval" / "teacher.json"

    def student(self, name: str) -> Path:
        return self.out / "students" / name

    def evals(self, name: str) -> Path:
        return self.out / "eval" / name

    def student_bundle(self, name: str) -> Path:
        return self.out / "bundles" / name

    # the search path: the dual tower, its index, the online query encoder and its bundle
    @property
    def retriever(self) -> Path:
        return self.out / "retriever"

    @property
    def index(self) -> Path:
        return self.out / "index"

    @property
    def query_encoder(self) -> Path:
        return self.out / "query-encoder"

    @property
    def search_bundle(self) -> Path:
        return self.out / "bundles" / "search"

    @property
    def search_evals(self) -> Path:
        return self.out / "eval" / "search"


def _recipe_args(recipe_ref: str, overrides: tuple[str, ...]) -> list[str]:
    return ["--recipe", recipe_ref, *(arg for text in overrides for arg in ("--set", text))]


def build_prefix(recipe_ref: str, overrides: tuple[str, ...], layout: Layout) -> list[Stage]:
    """Data, teacher and the teacher's eval: what every student of the ladder reads."""
    recipe, data, teacher = _recipe_args(recipe_ref, overrides), layout.data, layout.teacher
    return [
        Stage("data", "synthetic catalogue", ["data", "synth", *recipe, "--out", str(data)],
              [data / "dataset.json"], sections=("data",)),
        Stage("teacher", "teacher (MLM + MPM + ITA, adaptive loss)",
              ["train-teacher", *recipe, "--data", str(data), "--out", str(teacher)],
              [teacher / "model.safetensors"], ["data"], resumable=True, sections=("teacher", "train")),
        Stage("teacher-eval", "eval teacher",
              ["eval", "--model", str(teacher), "--data", str(data), "--backend", "onnxruntime",
               "--json", str(layout.teacher_eval)],
              [layout.teacher_eval], ["teacher"]),
    ]


def build_student_stages(
    recipe_ref: str, overrides: tuple[str, ...], layout: Layout, shape: StudentShape
) -> list[Stage]:
    """One rung of the ladder: distill this student, eval it, export, quantize, and gate its INT8 model."""
    name, width = shape.name, shape.overrides()
    data, teacher = str(layout.data), str(layout.teacher)
    student, evals, bundle = layout.student(name), layout.evals(name), layout.student_bundle(name)
    recipe = _recipe_args(recipe_ref, overrides)
    onnx, int8 = bundle / ONNX_FILE, bundle / INT8_CPU_FILE

    def stage(base: str, title: str, args: list[str], outputs: list[Path], after: list[str], **kw) -> Stage:
        return Stage(f"{base}[{name}]", f"{title} [{name}]", args, outputs,
                     [a if a in ("teacher", "teacher-eval") else f"{a}[{name}]" for a in after], student=name, **kw)

    return [
        stage("student", "distill 2-layer VSL student",
              ["distill", *recipe, *(arg for text in width for arg in ("--set", text)), "--teacher", teacher,
               "--data", data, "--out", str(student)],
              [student / "model.safetensors"], ["teacher"], resumable=True, sections=("train", "distill"),
              overrides=width),
        stage("student-eval", "eval student",
              ["eval", "--model", str(student), "--data", data, "--json", str(evals / "student.json")],
              [evals / "student.json"], ["student"]),
        stage("onnx", "export ONNX bundle",
              ["export", "--model", str(student), "--target", "onnx", "--out", str(bundle), *recipe,
               "--data", data, "--force", "--json", str(evals / "export.json")],
              [onnx, bundle / "manifest.json"], ["student"], sections=("export",)),
        stage("onnx-eval", "eval ONNX (ONNX Runtime)",
              ["eval", "--model", str(onnx), "--data", data, "--json", str(evals / "onnx.json")],
              [evals / "onnx.json"], ["onnx"]),
        stage("int8", "INT8 quantization with accuracy guard",
              ["quantize", "--model", str(onnx), "--data", data, "--out", str(bundle), *recipe,
               "--reference-eval", str(evals / "onnx.json"), "--json", str(evals / "quantize.json")],
              [int8], ["onnx", "onnx-eval"], gate=True, sections=("quantize",)),
        stage("check", "release gate: INT8 student vs teacher",
              ["check", "--teacher", teacher, "--candidate", str(int8), "--data", data, *recipe,
               "--teacher-eval", str(layout.teacher_eval), "--json", str(evals / "check.json")],
              [evals / "check.json"], ["teacher-eval", "int8"], gate=True, sections=("check",)),
    ]


# The shipped bundles' Triton repositories: what a CPU serves from pip's tritonserver (serve_triton.py) with the
# guarded INT8 graphs; a GPU team exports again with engines (the bundle README says how).
TRITON_CPU = ("--precision", "int8", "--triton-kind", "cpu", "--triton-scorer", "python")


def build_suffix(recipe_ref: str, overrides: tuple[str, ...], layout: Layout, shipped: str) -> list[Stage]:
    """After the ladder: ship the chosen student's bundle, build engines into it, benchmark every form."""
    recipe = _recipe_args(recipe_ref, overrides)
    student, source, bundle = layout.student(shipped), layout.student_bundle(shipped), layout.bundle
    onnx, int8 = bundle / ONNX_FILE, bundle / INT8_CPU_FILE
    out = layout.out
    return [
        Stage("ship", f"ship student {shipped} to {bundle}", [], [bundle / "manifest.json", int8],
              [f"check[{shipped}]"], student=shipped, action=lambda: ship_bundle(source, bundle),
              action_text=f"copy {source} -> {bundle}"),
        Stage("tensorrt", "TensorRT engines",
              ["export", "--model", str(student), "--target", "tensorrt", "--out", str(bundle), *recipe],
              [bundle / "manifest.json"], ["ship"], gate=True, skip_reason=tensorrt_unavailable,
              sections=("export",), student=shipped),
        Stage("triton", "Triton ensemble for CPUs (the INT8 scorer in ONNX Runtime, Python backend)",
              ["export", "--model", str(student), "--target", "triton", "--out", str(bundle), *TRITON_CPU, *recipe],
              [bundle / "triton" / "fashionbert_ensemble" / "config.pbtxt"], ["ship"], sections=("export",),
              student=shipped),
        Stage("bench", "latency benchmark",
              ["bench", "--model", str(layout.teacher), "--model", str(student), "--model", str(onnx),
               "--model", str(int8), "--label", "teacher", "--label", "student", "--label", "student-onnx",
               "--label", "student-int8", "--batch-sizes", "1", "--text-lengths", "8,16,32,64", "--pad-to", "64",
               "--json", str(out / "bench.json"), "--md", str(out / "bench.md"), "--plots", str(out / "plots")],
              [out / "bench.json"], ["teacher", "ship"], student=shipped),
    ]


def build_search_stages(recipe_ref: str, overrides: tuple[str, ...], layout: Layout) -> list[Stage]:
    """The search stack after the scorer's: dual-tower retriever continued from the teacher → its index → the 2-layer
    VSL query encoder → search bundle (ONNX, INT8 behind the retrieval guard) → eval-retrieval with the shipped
    scorer re-ranking → release gate → latency; the gated search bundle ships into the scorer's as `search/`."""
    recipe = _recipe_args(recipe_ref, overrides)
    data, evals, bundle = str(layout.data), layout.search_evals, layout.search_bundle
    int8 = bundle / QUERY_ENCODER_INT8_FILE
    shipped = layout.bundle / SEARCH_SUBDIR
    return [
        Stage("retriever", "dual-tower retriever (InfoNCE + cross-encoder scores, adaptive loss)",
              ["train-retriever", *recipe, "--teacher", str(layout.teacher), "--data", data, "--out",
               str(layout.retriever)], [layout.retriever / "model.safetensors"], ["teacher"], resumable=True,
              sections=("train", "retriever")),
        Stage("index", "product index (offline encoding + FAISS)",
              ["index", "build", "--model", str(layout.retriever), "--data", data, "--out", str(layout.index), *recipe,
               "--force"], [layout.index / "index.json"], ["retriever"], sections=("index",)),
        Stage("query-encoder", "distill 2-layer VSL query encoder",
              ["distill", *recipe, "--retriever", str(layout.retriever), "--data", data, "--out",
               str(layout.query_encoder)], [layout.query_encoder / "model.safetensors"], ["retriever"],
              resumable=True, sections=("train", "query_encoder")),
        Stage("search-onnx", "export the search bundle (query encoder ONNX)",
              ["export", "--model", str(layout.query_encoder), "--target", "onnx", "--out", str(bundle), *recipe,
               "--force"], [bundle / QUERY_ENCODER_FILE, bundle / "manifest.json"], ["query-encoder"],
              sections=("export",)),
        Stage("search-int8", "INT8 query encoder with retrieval guard",
              ["quantize", "--model", str(bundle), "--data", data, "--index", str(layout.index), *recipe,
               "--json", str(evals / "quantize.json")], [int8], ["search-onnx", "index"], gate=True,
              sections=("quantize",)),
        Stage("search-eval", "eval-retrieval: INT8 query encoder, then the shipped scorer re-ranks",
              ["eval-retrieval", "--index", str(layout.index), "--data", data, "--model", str(int8), "--rerank",
               str(layout.bundle / INT8_CPU_FILE), "--rerank-k", "50", "--json", str(evals / "retrieval.json"),
               "--markdown", str(evals / "retrieval.md")], [evals / "retrieval.json"], ["search-int8", "ship"]),
        Stage("search-check", "release gate: INT8 query encoder vs the 6-layer query tower",
              ["check", "--teacher", str(layout.retriever), "--candidate", str(int8), "--data", data, "--index",
               str(layout.index), *recipe, "--json", str(evals / "check.json")], [evals / "check.json"],
              ["search-int8"], gate=True, sections=("check",)),
        Stage("ship-search", f"ship the search bundle to {shipped}", [], [shipped / "manifest.json"],
              ["search-check", "ship"], action=lambda: ship_bundle(bundle, shipped),
              action_text=f"copy {bundle} -> {shipped}"),
        Stage("search-triton", "Triton ensemble of the query encoder for CPUs (INT8)",
              ["export", "--model", str(layout.query_encoder), "--target", "triton", "--out", str(shipped),
               *TRITON_CPU, *recipe], [shipped / "triton" / "fashionbert_query_ensemble" / "config.pbtxt"],
              ["ship-search"], sections=("export",)),
        Stage("search-bench", "search latency: query encoders and whole searches",
              ["bench", "--index", str(layout.index), "--data", data, "--model", str(layout.retriever), "--model",
               str(int8), "--label", "query tower (6L, PyTorch FP32)", "--label", "query encoder (2L VSL, INT8)",
               "--rerank", str(layout.bundle / INT8_CPU_FILE), "--json", str(evals / "bench.json"), "--md",
               str(evals / "bench.md")], [evals / "bench.json"], ["search-int8", "ship"]),
    ]


def build_stages(recipe_ref: str, overrides: tuple[str, ...], out: Path, bundle: Path,
                 shipped: str | None = None) -> list[Stage]:
    """Every stage the pipeline may run, the suffix for `shipped` (default: the first student of the ladder)."""
    students = load_recipe_or_defaults(recipe_ref, overrides).quickstart.students
    layout = Layout(out, bundle)
    stages = build_prefix(recipe_ref, overrides, layout)
    for shape in students:
        stages += build_student_stages(recipe_ref, overrides, layout, shape)
    return (stages + build_suffix(recipe_ref, overrides, layout, shipped or students[0].name)
            + build_search_stages(recipe_ref, overrides, layout))


def ship_bundle(source: Path, target: Path) -> None:
    """Copy the chosen student's bundle to the hand-off location, atomically: the old bundle stays whole until the
    new one is complete (copied beside it under a temporary name, then swapped in by two renames)."""
    import shutil

    if not (source / "manifest.json").is_file():
        raise FbError(f"{source} is not an export bundle (no manifest.json)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.shipping")
    retired = target.with_name(f".{target.name}.retired")
    for leftover in (staging, retired):
        shutil.rmtree(leftover, ignore_errors=True)
    shutil.copytree(source, staging)
    if target.exists():
        target.rename(retired)
    staging.rename(target)
    shutil.rmtree(retired, ignore_errors=True)


def _fingerprint(stage: Stage, recipe: dict, upstream: dict[str, str]) -> str:
    """What a stage's result depends on: its own command line (the recipe flags aside), the recipe sections it
    reads, its rung's width, the package version and each stage it reads from (by run token, see
    run_quickstart). So a changed quantize tolerance re-runs quantize and what follows it, never the teacher."""
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
        "args": args or [stage.action_text],
        "recipe": {name: recipe.get(name) for name in stage.sections},
        "version": __version__,
        "after": {name: upstream.get(name, "") for name in stage.after},
    }
    if stage.overrides:  # only where there are any, so the fingerprints of other stages stay what they were
        payload["overrides"] = list(stage.overrides)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _read_state(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}  # a damaged state file only costs reuse, never correctness
    return state if isinstance(state, dict) else {}


def _run_action(action: Callable[[], None]) -> int:
    try:
        action()
    except (FbError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    return 0


def check_latency_ms(check_json: Path) -> float | None:
    """The candidate's p50 at the recipe's reference shape, as `fbcompress check` measured it (None when the
    verdict is missing or unreadable: that student is ranked last)."""
    from fbcompress.release.verdict import read_verdict

    try:
        verdict = read_verdict(check_json)
    except FbError:
        return None
    p50 = verdict.candidate.latency.get("p50_ms") if verdict is not None else None
    return float(p50) if isinstance(p50, (int, float)) and not isinstance(p50, bool) else None


class _Runner:
    """Runs (or reuses) stages one at a time, keeping the state file, run tokens and broken stages."""

    def __init__(self, recipe: dict, out: Path, force: bool, invoke: Callable[[list[str]], int], bar) -> None:
        self.recipe, self.force, self.invoke, self.bar = recipe, force, invoke, bar
        self.state_path = out / STATE_FILE
        self.state = {} if force else _read_state(self.state_path)
        # A stage's run token is its fingerprint plus when it last ran: a stage that re-runs gets a new token, so
        # everything that reads its output re-runs too, even if the stage's own inputs were unchanged.
        self.tokens: dict[str, str] = {}
        self.broken: dict[str, str] = {}
        self.results: list[StageResult] = []

    def skip(self, stage: Stage, reason: str) -> None:
        self.results.append(StageResult(stage.name, "skipped", 0.0, reason=reason, command=_command(stage),
                                        student=stage.student))
        self.broken[stage.name] = reason
        self.bar.update(1)

    def run(self, stage: Stage) -> StageResult:
        result = self._run(stage)
        self.results.append(result)
        self.bar.update(1)
        return result

    def _run(self, stage: Stage) -> StageResult:
        from tqdm.auto import tqdm

        self.bar.set_postfix_str(stage.name)
        fp = _fingerprint(stage, self.recipe, self.tokens)
        record = self.state.get(stage.name, {})
        same = record.get("fingerprint") == fp
        self.tokens[stage.name] = f"{fp}@{record.get('ran_at', '')}" if same else f"{fp}@new"
        command = _command(stage)

        def result(status: str, seconds: float, code: int = 0, reason: str = "") -> StageResult:
            return StageResult(stage.name, status, seconds, code, reason, command, stage.student, stage.gate)

        blocked = [name for name in stage.after if name in self.broken]
        if blocked:
            reason = f"needs {blocked[0]}: {self.broken[blocked[0]]}"
            self.broken[stage.name] = reason
            return result("skipped", 0.0, reason=reason)
        skip = stage.skip_reason()
        if skip:
            tqdm.write(f"[{stage.name}] skipped: {skip}")
            self.broken[stage.name] = skip
            return result("skipped", 0.0, reason=skip)
        if same:
            code = int(record.get("exit_code", 0))
            if code == 0 and all(p.exists() for p in stage.outputs):
                # the seconds are those of the run that made the output
                return result("reused", float(record.get("seconds", 0.0)), reason="inputs unchanged")
            if code != 0 and stage.gate:  # a gate that failed on these same inputs fails again: reuse
                self.broken[stage.name] = f"exit code {code}"
                return result("failed", 0.0, code, f"exit code {code} (reused)")
        args = list(stage.args)
        if stage.resumable:
            # Interrupted before (no record): continue from the last complete checkpoint. Inputs changed
            # (a record with another fingerprint) or --force: start over.
            args.append("--force" if (self.force or record) else "--resume")
        tqdm.write(f"[{stage.name}] {stage.title}: {_command(stage, args)}")
        start = time.perf_counter()
        code = _run_action(stage.action) if stage.action else self.invoke(args)
        seconds = time.perf_counter() - start
        if code == EXIT_INTERRUPTED:  # Ctrl-C inside a stage stops the whole pipeline, not just that stage
            self.bar.close()
            raise QuickstartInterrupted(stage.name)
        if code == 0 and not all(p.exists() for p in stage.outputs):
            code = 1
        ran_at = time.strftime("%Y-%m-%dT%H:%M:%S") + f".{time.time_ns() % 10**9:09d}"
        self.tokens[stage.name] = f"{fp}@{ran_at}"
        if code == 0 or stage.gate:
            self.state[stage.name] = {"fingerprint": fp, "exit_code": code, "seconds": round(seconds, 1),
                                      "ran_at": ran_at}
            atomic_write_json(self.state_path, self.state)
        if code != 0:
            self.broken[stage.name] = f"exit code {code}"
            if not stage.gate:
                tqdm.write(f"[{stage.name}] failed (exit code {code}); later stages that need it are skipped")
            return result("failed", seconds, code, f"exit code {code}")
        return result("ran", seconds)


def _command(stage: Stage, args: list[str] | None = None) -> str:
    if stage.action:
        return stage.action_text
    return "fbcompress " + " ".join(args if args is not None else stage.args)


def run_quickstart(
    recipe_ref: str,
    overrides: tuple[str, ...],
    out: Path,
    bundle: Path,
    invoke: Callable[[list[str]], int],
    force: bool = False,
    all_students: bool = False,
) -> list[StageResult]:
    """Run (or reuse) every stage in order; a stage whose input failed is skipped with that reason.

    The student ladder: each student in `quickstart.students` (fastest first) is distilled, exported, quantized
    and checked against the teacher until one passes the gate; that one is shipped. With `all_students` every
    student is measured (the Pareto table) and the fastest that passed, by the check's own latency, is shipped.
    """
    from tqdm.auto import tqdm

    parsed = load_recipe_or_defaults(recipe_ref, overrides)
    students = parsed.quickstart.students
    ensure_output_dir(out)
    layout = Layout(out, bundle)
    prefix = build_prefix(recipe_ref, overrides, layout)
    ladder = [build_student_stages(recipe_ref, overrides, layout, shape) for shape in students]
    search = build_search_stages(recipe_ref, overrides, layout)
    total = (len(prefix) + sum(len(rung) for rung in ladder) + len(build_suffix(recipe_ref, overrides, layout, "-"))
             + len(search))
    bar = tqdm(total=total, desc="quickstart", unit="stage", position=0, leave=True)
    runner = _Runner(without_later_defaults(parsed.model_dump(mode="json")), out, force, invoke, bar)
    for stage in prefix:
        runner.run(stage)
    passed: list[str] = []
    for shape, rung in zip(students, ladder, strict=True):
        if passed and not all_students:
            for stage in rung:
                runner.skip(stage, f"not needed: {passed[0]} passed the release gate")
            continue
        for stage in rung:
            outcome = runner.run(stage)
        if outcome.status in ("ran", "reused"):
            passed.append(shape.name)
    if all_students and len(passed) > 1:
        timed = {name: check_latency_ms(layout.evals(name) / "check.json") for name in passed}
        passed.sort(key=lambda name: (timed[name] is None, timed[name] or 0.0))
    suffix = build_suffix(recipe_ref, overrides, layout, passed[0] if passed else students[0].name)
    for stage in suffix:
        if passed or stage.name != "ship":
            runner.run(stage)
        else:
            runner.skip(stage, "no student passed the release gate: nothing shipped")
    for stage in search:
        runner.run(stage)
    bar.close()
    return runner.results


@dataclass
class QuickstartRun:
    results: list[StageResult]
    shipped: str | None  # the student whose bundle was shipped
    report: Path  # report.md
    exit_code: int  # 0 shipped, 1 no student passed the gates, 2 a stage crashed


def quickstart_and_report(
    recipe_ref: str,
    overrides: tuple[str, ...],
    out: Path,
    bundle: Path,
    invoke: Callable[[list[str]], int],
    force: bool = False,
    all_students: bool = False,
) -> QuickstartRun:
    """`fbcompress quickstart`: every stage (`run_quickstart`), then the report in `out` (and in the shipped
    bundle), and the exit code the run earned."""
    from fbcompress.evaluation.latency import machine_info
    from fbcompress.pipeline.report import build_report

    require_clean_out(out)
    students = [s.name for s in load_recipe_or_defaults(recipe_ref, overrides).quickstart.students]
    results = run_quickstart(recipe_ref, overrides, out, bundle, invoke=invoke, force=force,
                             all_students=all_students)
    shipped = shipped_student(results)
    build_report(out, bundle, [vars(r) for r in results], machine_info(), students, shipped)
    return QuickstartRun(results, shipped, out / "report.md", exit_code(results, shipped))


def exit_code(results: list[StageResult], shipped: str | None) -> int:
    """A failed gate is a verdict (exit 1 when no student passed); any other failed stage is a crash (exit 2)."""
    if any(r.status == "failed" and not r.gate for r in results):
        return 2
    return 0 if shipped else 1


def shipped_student(results: list[StageResult]) -> str | None:
    """The student whose bundle was shipped (ran or reused), or None."""
    return next((r.student for r in results if r.name == "ship" and r.status in ("ran", "reused")), None)


def require_clean_out(out: Path) -> None:
    """Refuse an --out that is a file or holds something other than a quickstart run."""
    if out.exists() and not out.is_dir():
        raise FbError(f"--out {out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / STATE_FILE).exists() and not (out / "data").exists():
        raise FbError(f"--out {out} holds other files; pick an empty or quickstart directory")
