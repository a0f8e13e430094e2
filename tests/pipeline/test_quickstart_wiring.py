"""Quickstart wiring: which file each stage reads and writes, which student is shipped, and the command's exit codes.

test_quickstart.py maps every call back to its stage through `build_stages` itself, so a stage wired to the
wrong file (the release gate judging model.onnx instead of the INT8 file) still "runs". Here the expected paths are
spelled out from the documented layout (`OUT/students/NAME`, `OUT/bundles/NAME/model.int8.onnx`, ...) and the fake
commands are semantic: each one reads the files its flags name, refuses a file no earlier stage wrote, and writes
what the real command writes (the INT8 file records the ONNX it was quantized from, `check.json` the candidate's
p50 latency).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from records import verdict_record

from fbcompress.pipeline import quickstart as qs

SMOKE, QUICKSTART = "smoke", "quickstart"
LADDERS = {SMOKE: ["student"], QUICKSTART: ["h128", "h192", "h256"]}  # fbcompress/recipes/*.yaml quickstart.students


@pytest.fixture(autouse=True)
def no_tensorrt(monkeypatch):
    """The same stages on every machine (the TensorRT stage is skipped unless a test pins the opposite)."""
    monkeypatch.setattr(qs, "tensorrt_unavailable", lambda: "TensorRT is not installed (test)")


def flag(args: list[str], name: str) -> str:
    """The value of `name` in a command line (exactly one occurrence)."""
    assert args.count(name) == 1, f"{name} given {args.count(name)} times in {args}"
    return args[args.index(name) + 1]


def flags(args: list[str], name: str) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args) if arg == name]


def stages_by_name(recipe: str, out: Path, bundle: Path, shipped: str | None = None) -> dict[str, qs.Stage]:
    return {s.name: s for s in qs.build_stages(recipe, (), out, bundle, shipped)}


# --------------------------------------------------------------------------------------------- static wiring


def test_ladder_recipes_are_what_these_tests_expect():
    """Guards the tests below: they spell out the smoke and quickstart ladders."""
    from fbcompress.recipes import load_recipe_or_defaults as _recipe

    for recipe, names in LADDERS.items():
        assert [s.name for s in _recipe(recipe).quickstart.students] == names


@pytest.mark.parametrize("recipe", [SMOKE, QUICKSTART])
def test_release_gate_judges_each_students_int8_file(recipe, tmp_path):
    """`check[NAME]` gates the INT8 model: --candidate is OUT/bundles/NAME/model.int8.onnx, against the teacher
    checkpoint and its eval, writing OUT/eval/NAME/check.json (what the ladder and the report read).
    Breaks caught: --candidate pointing at `onnx` (model.onnx) or at the student checkpoint; --teacher-eval not the
    teacher's eval; --json elsewhere than eval/NAME/check.json; the gate not waiting for int8 (after)."""
    out, bundle = tmp_path / "run", tmp_path / "bundle"
    stages = stages_by_name(recipe, out, bundle)
    for name in LADDERS[recipe]:
        check = stages[f"check[{name}]"]
        assert check.args[0] == "check"
        assert flag(check.args, "--candidate") == str(out / "bundles" / name / "model.int8.onnx")
        assert flag(check.args, "--teacher") == str(out / "teacher")
        assert flag(check.args, "--teacher-eval") == str(out / "eval" / "teacher.json")
        assert flag(check.args, "--data") == str(out / "data")
        assert flag(check.args, "--json") == str(out / "eval" / name / "check.json")
        assert flag(check.args, "--recipe") == recipe
        assert check.outputs == [out / "eval" / name / "check.json"]
        assert set(check.after) == {"teacher-eval", f"int8[{name}]"} and check.gate


@pytest.mark.parametrize("recipe", [SMOKE, QUICKSTART])
def test_quantize_reads_the_onnx_its_student_exported(recipe, tmp_path):
    """`int8[NAME]` quantizes OUT/bundles/NAME/model.onnx into that same bundle, guarded by that ONNX file's eval;
    `onnx[NAME]` exports checkpoint OUT/students/NAME there, `onnx-eval[NAME]` scores that model.onnx.
    Breaks caught: quantize --model pointing at the checkpoint (or another student's bundle), --out not the
    student's bundle, --reference-eval not onnx.json; export --model / --out swapped; onnx-eval scoring the
    checkpoint instead of the exported file."""
    out, bundle = tmp_path / "run", tmp_path / "bundle"
    stages = stages_by_name(recipe, out, bundle)
    for name in LADDERS[recipe]:
        student, own_bundle, evals = out / "students" / name, out / "bundles" / name, out / "eval" / name
        int8 = stages[f"int8[{name}]"]
        assert int8.args[0] == "quantize"
        assert flag(int8.args, "--model") == str(own_bundle / "model.onnx")
        assert flag(int8.args, "--out") == str(own_bundle)
        assert flag(int8.args, "--reference-eval") == str(evals / "onnx.json")
        assert flag(int8.args, "--data") == str(out / "data")
        assert own_bundle / "model.int8.onnx" in int8.outputs
        assert set(int8.after) == {f"onnx[{name}]", f"onnx-eval[{name}]"} and int8.gate

        onnx = stages[f"onnx[{name}]"]
        assert onnx.args[:1] == ["export"] and flag(onnx.args, "--target") == "onnx"
        assert flag(onnx.args, "--model") == str(student)
        assert flag(onnx.args, "--out") == str(own_bundle)
        assert own_bundle / "model.onnx" in onnx.outputs

        onnx_eval = stages[f"onnx-eval[{name}]"]
        assert onnx_eval.args[0] == "eval"
        assert flag(onnx_eval.args, "--model") == str(own_bundle / "model.onnx")
        assert flag(onnx_eval.args, "--json") == str(evals / "onnx.json")

        distill = stages[f"student[{name}]"]
        assert distill.args[0] == "distill"
        assert flag(distill.args, "--teacher") == str(out / "teacher")
        assert flag(distill.args, "--out") == str(student)
        student_eval = stages[f"student-eval[{name}]"]
        assert flag(student_eval.args, "--model") == str(student)
        assert flag(student_eval.args, "--json") == str(evals / "student.json")


def test_each_rung_distills_its_own_width(tmp_path):
    """Each student's distill stage carries its rung's --set width (h192 gets hidden_size=192, ...), after the
    recipe's own --set values. Break caught: the width of another rung (or none) passed to distill."""
    stages = stages_by_name(QUICKSTART, tmp_path / "run", tmp_path / "bundle")
    for name, hidden, heads, ffn in (("h128", 128, 4, 512), ("h192", 192, 6, 768), ("h256", 256, 8, 1024)):
        sets = flags(stages[f"student[{name}]"].args, "--set")
        assert sets == [f"distill.hidden_size={hidden}", f"distill.num_heads={heads}",
                        f"distill.intermediate_size={ffn}"]


@pytest.mark.parametrize("recipe, shipped", [(SMOKE, "student"), (QUICKSTART, "h128"), (QUICKSTART, "h192"),
                                             (QUICKSTART, "h256")])
def test_ship_engines_and_bench_follow_the_shipped_student(recipe, shipped, tmp_path):
    """For every ladder position: ship copies OUT/bundles/SHIPPED (after check[SHIPPED]) to the hand-off bundle;
    TensorRT builds from the shipped student into the hand-off bundle; bench times teacher, the shipped student's
    checkpoint and the *shipped* bundle's model.onnx and model.int8.onnx, labelled in that order.
    Breaks caught: ship copying another student's bundle or waiting on another gate; bench timing the per-student
    bundle (or model.onnx twice) instead of the shipped files; labels out of order; tensorrt --out elsewhere."""
    out, bundle = tmp_path / "run", tmp_path / "bundle"
    stages = stages_by_name(recipe, out, bundle, shipped)
    ship = stages["ship"]
    assert ship.kind == "action" and ship.action_text == f"copy {out / 'bundles' / shipped} -> {bundle}"
    assert ship.after == [f"check[{shipped}]"] and ship.student == shipped
    assert bundle / "model.int8.onnx" in ship.outputs and bundle / "manifest.json" in ship.outputs

    trt = stages["tensorrt"]
    assert flag(trt.args, "--target") == "tensorrt"
    assert flag(trt.args, "--model") == str(out / "students" / shipped)
    assert flag(trt.args, "--out") == str(bundle)
    assert trt.after == ["ship"]

    bench = stages["bench"]
    assert bench.args[0] == "bench"
    assert flags(bench.args, "--model") == [str(out / "teacher"), str(out / "students" / shipped),
                                           str(bundle / "model.onnx"), str(bundle / "model.int8.onnx")]
    assert flags(bench.args, "--label") == ["teacher", "student", "student-onnx", "student-int8"]
    assert flag(bench.args, "--json") == str(out / "bench.json")
    assert set(bench.after) == {"teacher", "ship"}


@pytest.mark.parametrize("shipped", LADDERS[QUICKSTART])
def test_ship_action_copies_the_shipped_students_bundle(shipped, tmp_path):
    """The ship stage's in-process action copies exactly OUT/bundles/SHIPPED. Break caught: the action (a lambda,
    not its printed args) copying another bundle, e.g. `ship_bundle(layout.student_bundle(students[0]), ...)`."""
    out, bundle = tmp_path / "run", tmp_path / "bundle"
    for name in LADDERS[QUICKSTART]:
        source = out / "bundles" / name
        source.mkdir(parents=True)
        (source / "manifest.json").write_text(json.dumps({"student": name}))
    stages = stages_by_name(QUICKSTART, out, bundle, shipped)
    stages["ship"].action()
    assert json.loads((bundle / "manifest.json").read_text()) == {"student": shipped}


# ------------------------------------------------------------------------------------- a semantic fake pipeline


class Pipeline:
    """Stands in for the fbcompress commands by what their flags say, never by looking the stage up: each command
    refuses an input no earlier command wrote, and writes its outputs with where they came from.

    `fail`: {(command, student or None): exit code}; `p50`: the candidate p50 `check` reports per student (absent:
    a check.json without latency)."""

    def __init__(self, fail: dict[tuple[str, str | None], int] | None = None, p50: dict[str, float] | None = None):
        self.fail = fail or {}
        self.p50 = p50 or {}
        self.calls: list[list[str]] = []

    def call(self, command: str) -> list[str]:
        return next(c for c in self.calls if c[0] == command)

    def calls_of(self, command: str) -> list[list[str]]:
        return [c for c in self.calls if c[0] == command]

    def student_distills(self) -> list[list[str]]:
        """The scorer students' `distill` calls (not the query encoder's, `distill --retriever`)."""
        return [c for c in self.calls_of("distill") if "--teacher" in c]

    @staticmethod
    def _student(args: list[str]) -> str | None:
        for arg in args:
            parts = Path(arg).parts
            for marker in ("students", "bundles", "eval"):
                if marker in parts[:-1]:
                    return parts[parts.index(marker) + 1].removesuffix(".json")
        return None

    @staticmethod
    def _read(path: str, starts: str) -> str:
        file = Path(path)
        assert file.is_file(), f"reads {path}, which no earlier stage wrote"
        text = file.read_text()
        assert text.startswith(starts), f"{path} holds {text!r}, not {starts}..."
        return text

    @staticmethod
    def _write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def __call__(self, args: list[str]) -> int:
        self.calls.append(list(args))
        command = args[0]
        student = self._student(args)
        code = self.fail.get((command, student), self.fail.get((command, None)))
        if code is not None:
            return code
        if command in SEARCH_COMMANDS or "--retriever" in args or "--index" in args or _query_encoder(args):
            self._search(command, args)
        elif command == "data":
            self._write(Path(flag(args, "--out")) / "dataset.json", "dataset")
        elif command in ("train-teacher", "distill"):
            if command == "distill":
                self._read(str(Path(flag(args, "--teacher")) / "model.safetensors"), "checkpoint")
            self._write(Path(flag(args, "--out")) / "model.safetensors", f"checkpoint {flag(args, '--out')}")
        elif command == "eval":
            model = Path(flag(args, "--model"))
            self._read(str(model / "model.safetensors") if model.suffix != ".onnx" else str(model), "")
            self._write(Path(flag(args, "--json")), json.dumps({"auc": 0.9, "model": str(model)}))
        elif command == "export" and flag(args, "--target") == "onnx":
            self._read(str(Path(flag(args, "--model")) / "model.safetensors"), "checkpoint")
            bundle = Path(flag(args, "--out"))
            self._write(bundle / "model.onnx", f"onnx of {flag(args, '--model')}")
            self._write(bundle / "manifest.json", "{}")
            self._write(Path(flag(args, "--json")), "{}")
        elif command == "export" and flag(args, "--target") == "triton":  # the shipped bundle's INT8, served
            out = Path(flag(args, "--out"))
            assert flag(args, "--precision") == "int8"
            self._read(str(out / "model.int8.onnx"), "int8 of ")
            self._write(out / "triton" / "fashionbert_ensemble" / "config.pbtxt", "ensemble")
        elif command == "export":  # tensorrt, into the shipped bundle
            self._read(str(Path(flag(args, "--out")) / "manifest.json"), "")
            self._write(Path(flag(args, "--out")) / "model.plan", "engine")
        elif command == "quantize":
            model = flag(args, "--model")
            self._read(model, "onnx of ")
            self._read(flag(args, "--reference-eval"), "{")
            self._write(Path(flag(args, "--out")) / "model.int8.onnx", f"int8 of {model}")
            self._write(Path(flag(args, "--json")), "{}")
        elif command == "check":
            self._read(flag(args, "--candidate"), "int8 of ")
            self._read(flag(args, "--teacher-eval"), "{")
            latency = {"p50_ms": self.p50[student]} if student in self.p50 else {}
            report = verdict_record(latency, flag(args, "--candidate"))
            self._write(Path(flag(args, "--json")), json.dumps(report))
        elif command == "bench":
            for model in flags(args, "--model"):
                assert Path(model).exists(), f"bench times {model}, which does not exist"
            self._write(Path(flag(args, "--json")), json.dumps({"models": [], "results": []}))
        else:
            raise AssertionError(f"unexpected command {args}")
        return 0

    def _search(self, command: str, args: list[str]) -> None:
        """The search stages: each reads what an earlier one wrote (the retriever from the teacher, the index and the
        query encoder from the retriever, the bundle from the query encoder, the INT8 file from that bundle)."""
        if command == "train-retriever":
            self._read(str(Path(flag(args, "--teacher")) / "model.safetensors"), "checkpoint")
            self._write(Path(flag(args, "--out")) / "model.safetensors", "retriever")
        elif command == "index":
            self._read(str(Path(flag(args, "--model")) / "model.safetensors"), "retriever")
            self._write(Path(flag(args, "--out")) / "index.json", f"index of {flag(args, '--model')}")
        elif command == "distill":
            self._read(str(Path(flag(args, "--retriever")) / "model.safetensors"), "retriever")
            self._write(Path(flag(args, "--out")) / "model.safetensors", "query encoder")
        elif command == "export" and flag(args, "--target") == "triton":  # the shipped search bundle's INT8
            out = Path(flag(args, "--out"))
            assert flag(args, "--precision") == "int8"
            self._read(str(out / "query_encoder.int8.onnx"), "int8 of ")
            self._write(out / "triton" / "fashionbert_query_ensemble" / "config.pbtxt", "query ensemble")
        elif command == "export":
            self._read(str(Path(flag(args, "--model")) / "model.safetensors"), "query encoder")
            bundle = Path(flag(args, "--out"))
            self._write(bundle / "query_encoder.onnx", "query encoder onnx")
            self._write(bundle / "manifest.json", "{}")
        elif command == "quantize":
            source = Path(flag(args, "--model")) / "query_encoder.onnx"
            self._read(str(source), "query encoder onnx")
            self._read(str(Path(flag(args, "--index")) / "index.json"), "index of ")
            self._write(Path(flag(args, "--model")) / "query_encoder.int8.onnx", f"int8 of {source}")
            self._write(Path(flag(args, "--json")), "{}")
        elif command in ("eval-retrieval", "check", "bench"):
            self._read(str(Path(flag(args, "--index")) / "index.json"), "index of ")
            models = [flag(args, "--model" if command != "check" else "--candidate")] if command != "bench" else \
                flags(args, "--model")
            self._read(models[-1], "int8 of ")
            if command != "check":
                self._read(flag(args, "--rerank"), "int8 of ")
            report = verdict_record({}, models[-1]) if command == "check" else {}
            self._write(Path(flag(args, "--json")), json.dumps(report))
        else:
            raise AssertionError(f"unexpected search command {args}")


SEARCH_COMMANDS = ("train-retriever", "index", "eval-retrieval")


def _query_encoder(args: list[str]) -> bool:
    """An export of the query encoder (its stage's --model)."""
    return args[0] == "export" and Path(flag(args, "--model")).name == "query-encoder"


def run_pipeline(tmp_path: Path, fake: Pipeline, recipe: str = QUICKSTART, **kwargs) -> list[qs.StageResult]:
    return qs.run_quickstart(recipe, (), tmp_path / "run", tmp_path / "bundle", invoke=fake, **kwargs)


def test_the_gate_judges_the_file_that_quantize_wrote_from_the_exported_onnx(tmp_path):
    """End to end through the stand-in: quantize reads the ONNX the export wrote, the gate reads the INT8 file
    quantize wrote from it, and the shipped bundle holds that INT8 file. Breaks caught: as in the static tests,
    seen as a stage reading a file no earlier stage made (or the wrong one: model.onnx is not "int8 of ...")."""
    fake = Pipeline()
    results = run_pipeline(tmp_path, fake, SMOKE)
    assert qs.shipped_student(results) == "student"
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    assert flag(fake.call("quantize"), "--model") == str(run / "bundles" / "student" / "model.onnx")
    assert flag(fake.call("check"), "--candidate") == str(run / "bundles" / "student" / "model.int8.onnx")
    assert (bundle / "model.int8.onnx").read_text() == f"int8 of {run / 'bundles' / 'student' / 'model.onnx'}"
    assert all(r.status in ("ran", "skipped") for r in results), [(r.name, r.status) for r in results]


@pytest.mark.parametrize("first_pass", [0, 1, 2])
def test_ships_the_first_student_whose_gate_passed_at_every_ladder_position(first_pass, tmp_path):
    """Students before `first_pass` fail their gate (check exits 1): the one at `first_pass` is shipped (its own
    bundle, byte for byte), the rest are not even distilled, and TensorRT/bench use the shipped one.
    Breaks caught: shipping `students[0]` (or the last student tried) instead of `passed[0]`; `passed` filled from
    a failed rung; later rungs still run after one passed."""
    names = LADDERS[QUICKSTART]
    fake = Pipeline(fail={("check", name): 1 for name in names[:first_pass]})
    results = {r.name: r for r in run_pipeline(tmp_path, fake)}
    shipped = names[first_pass]
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    assert qs.shipped_student(list(results.values())) == shipped
    assert (bundle / "model.int8.onnx").read_text() == f"int8 of {run / 'bundles' / shipped / 'model.onnx'}"
    assert results["ship"].status == "ran" and results["ship"].student == shipped
    assert [flag(c, "--out") for c in fake.student_distills()] == [str(run / "students" / n)
                                                                   for n in names[: first_pass + 1]]
    for name in names[first_pass + 1:]:
        assert results[f"check[{name}]"].status == "skipped"
    assert flags(fake.call("bench"), "--model")[1] == str(run / "students" / shipped)


def test_no_student_passing_ships_nothing(tmp_path):
    """Every gate fails: nothing is shipped, the hand-off bundle is not created, the bench stage does not run.
    Break caught: the `passed` guard on ship dropped (`if True or stage.name != "ship"`): ship is then still held
    back, but only by its failed check[...] dependency, and reports that instead of "no student passed"."""
    fake = Pipeline(fail={("check", None): 1})
    results = {r.name: r for r in run_pipeline(tmp_path, fake)}
    assert qs.shipped_student(list(results.values())) is None
    assert results["ship"].status == "skipped" and "no student passed" in results["ship"].reason
    assert results["bench"].status == "skipped"
    assert not (tmp_path / "bundle").exists()
    assert not fake.calls_of("bench")


def test_all_students_ships_the_fastest_by_the_gates_own_p50(tmp_path):
    """--all-students: every rung runs; the shipped one is the passing student with the lowest candidate p50 in its
    check.json (read by the real `check_latency_ms`), a failed one is never shipped however fast.
    Breaks caught: sorting descending; sorting by the teacher's p50 or p99; shipping the ladder order's first;
    counting a failed gate as passed."""
    fake = Pipeline(fail={("check", "h128"): 1}, p50={"h128": 0.1, "h192": 2.5, "h256": 1.25})
    results = run_pipeline(tmp_path, fake, all_students=True)
    assert [flag(c, "--out") for c in fake.student_distills()] == [
        str(tmp_path / "run" / "students" / n) for n in LADDERS[QUICKSTART]]
    assert qs.shipped_student(results) == "h256"
    assert (tmp_path / "bundle" / "model.int8.onnx").read_text().endswith(str(Path("h256") / "model.onnx"))


def test_all_students_puts_a_student_without_latency_last(tmp_path):
    """A passing student whose check.json has no p50 (check_latency_ms is None) ranks after every timed one.
    Break caught: the `timed[name] is None` key dropped (None sorting as 0 ms: the untimed student shipped)."""
    fake = Pipeline(p50={"h192": 7.0, "h256": 9.0})  # h128 passed but has no latency
    results = run_pipeline(tmp_path, fake, all_students=True)
    assert qs.shipped_student(results) == "h192"


# ------------------------------------------------------------------------------------------- check_latency_ms


def write_check(path: Path, report) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report if isinstance(report, str) else json.dumps(report))
    return path


def test_check_latency_ms_reads_the_candidates_p50(tmp_path):
    """The candidate's p50, not the teacher's, not p99/mean. Breaks caught: report["teacher"] instead of
    ["candidate"]; "p99_ms" or "mean_ms" instead of "p50_ms"; the value rounded or converted to seconds."""
    path = write_check(tmp_path / "check.json",
                       verdict_record({"p50_ms": 1.375, "p99_ms": 4.5, "mean_ms": 2.0, "p90_ms": 3.0}))
    value = qs.check_latency_ms(path)
    assert value == 1.375 and isinstance(value, float)
    write_check(path, verdict_record({"p50_ms": 3}))
    value = qs.check_latency_ms(path)
    assert value == 3.0 and isinstance(value, float)


@pytest.mark.parametrize("content", [
    None,  # no file: the gate never ran
    "{not json",
    {},
    {"candidate": {"latency": {"p50_ms": 3.0}}},  # not a whole verdict
    verdict_record({}),
    verdict_record({"p50_ms": None}),
    verdict_record({"p50_ms": "fast"}),
    verdict_record({"p50_ms": True}),
    {**verdict_record({"p50_ms": 3.0}), "candidate": None},
    [],
], ids=["missing", "bad-json", "empty", "partial", "no-p50", "null-p50", "text-p50", "bool-p50", "null-candidate",
        "list"])
def test_check_latency_ms_is_none_for_an_unreadable_report(tmp_path, content):
    """A report without a readable candidate p50 gives None (so the ladder ranks that student last), never an
    exception. Breaks caught: a missing file, bad JSON or a record that is not a verdict escaping as an exception
    (crashing the --all-students run); a p50 that is not a number (a bool included) taken as one."""
    path = tmp_path / "eval" / "s" / "check.json"
    if content is not None:
        write_check(path, content)
    assert qs.check_latency_ms(path) is None


# ------------------------------------------------------------------------------------------------ exit codes


@pytest.fixture
def cli_quickstart(monkeypatch, tmp_path):
    """`fbcompress quickstart` through Click with the commands replaced: returns (run(fake, recipe) -> result)."""
    from fbcompress.evaluation import latency

    monkeypatch.setattr(latency, "machine_info", lambda *a, **k: {"cpu": "test cpu"})

    def invoke(fake, recipe: str = SMOKE, *extra: str):
        from fbcompress.commands import quickstart as quickstart_command
        from fbcompress.commands.cli import main

        monkeypatch.setattr(quickstart_command, "stage_invoker", lambda root: fake)
        args = ["quickstart", "--recipe", recipe, "--out", str(tmp_path / "run"), "--bundle",
                str(tmp_path / "bundle"), *extra]
        return CliRunner().invoke(main, args)

    return invoke


def test_exit_0_when_a_student_was_shipped(cli_quickstart, tmp_path):
    """The happy path exits 0 and leaves the report beside the bundle. Break caught: a passing run exiting 1/2
    (e.g. the engine stage not marked a gate while it is merely skipped)."""
    result = cli_quickstart(Pipeline())
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output[-400:]}"
    assert (tmp_path / "bundle" / "report" / "report.md").is_file()


@pytest.mark.parametrize("failing", [("check", None), ("quantize", None)], ids=["check-fails", "int8-guard-fails"])
def test_exit_1_when_no_student_passed_the_gate(cli_quickstart, failing):
    """A failed gate (check, or quantize's accuracy guard) for every student: exit 1, not 0 and not 2.
    Breaks caught: `sys.exit(1)` turned into 0 (or the `shipped is None` test dropped); "check" or "int8" missing
    not marked gates (a gate failure reported as a crash, exit 2)."""
    result = cli_quickstart(Pipeline(fail={failing: 1}))
    assert result.exit_code == 1, f"exit {result.exit_code}: {result.output[-400:]}"


def test_exit_1_when_every_rung_of_the_ladder_failed(cli_quickstart):
    """The quickstart recipe's three students all fail their gate: exit 1."""
    result = cli_quickstart(Pipeline(fail={("check", None): 1}), QUICKSTART)
    assert result.exit_code == 1, f"exit {result.exit_code}: {result.output[-400:]}"


@pytest.mark.parametrize("failing, code", [
    (("train-teacher", None), 1),
    (("distill", None), 2),
    (("eval", None), 1),
    (("export", None), 1),
    (("bench", None), 1),
], ids=["teacher", "distill", "eval", "export", "bench-after-ship"])
def test_exit_2_when_a_stage_crashed(cli_quickstart, failing, code):
    """A non-gate stage that fails is a crash: exit 2, whatever its own code, also when a student was shipped
    before it (bench). Breaks caught: the crash test after the shipped test (exit 1 instead of 2); `!=` turned into
    `not r.gate` inverted; a crash counted as a gate; EXIT_BAD_INPUT replaced by the stage's code."""
    result = cli_quickstart(Pipeline(fail={failing: code}))
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output[-400:]}"


class TrtFails(Pipeline):
    """The pipeline where the TensorRT engine build fails (exit 1)."""

    def __call__(self, args: list[str]) -> int:
        if args[0] == "export" and flag(args, "--target") == "tensorrt":
            self.calls.append(list(args))
            return 1
        return super().__call__(args)


def test_a_failed_tensorrt_build_is_a_gate_not_a_crash(cli_quickstart, monkeypatch):
    """Where TensorRT exists, a failed engine build is reported, the student is still shipped: exit 0.
    Break caught: the engine stage not marked a gate (exit 2)."""
    monkeypatch.setattr(qs, "tensorrt_unavailable", lambda: None)
    fake = TrtFails()
    result = cli_quickstart(fake)
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output[-400:]}"
    assert any(c[0] == "export" and "tensorrt" in c for c in fake.calls)  # the build was tried, and failed


@pytest.mark.parametrize("where", ["distill", "train-teacher", "check"])
def test_exit_130_when_a_stage_is_interrupted(cli_quickstart, tmp_path, where):
    """A stage interrupted by Ctrl-C (its command exits 130): the quickstart stops there and exits 130, with a
    line on how to continue; finished stages stay recorded. Breaks caught: `sys.exit(130)` changed; the runner's
    `code == EXIT_INTERRUPTED` test dropped (the pipeline carrying on: exit 2, or 1 for the gate)."""
    fake = Pipeline(fail={(where, None): qs.EXIT_INTERRUPTED})
    result = cli_quickstart(fake)
    assert result.exit_code == 130, f"exit {result.exit_code}: {result.output[-400:]}"
    assert "interrupted in stage" in result.output
    assert fake.calls[-1][0] == where  # nothing ran after the interrupted stage
    assert "data" in json.loads((tmp_path / "run" / qs.STATE_FILE).read_text())


def test_ctrl_c_inside_a_command_reaches_the_quickstart_as_130(monkeypatch, tmp_path):
    """The real in-process invoke: a KeyboardInterrupt inside a command is exit code 130 (FbGroup), which
    `cli.invoke_in_process` hands to the runner unchanged. Breaks caught: FbGroup exiting 2/1 on KeyboardInterrupt;
    `invoke_in_process` mapping a SystemExit code to 1."""
    from fbcompress.commands.cli import invoke_in_process
    from fbcompress.data import synth

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "synthesize_dataset", interrupted)
    assert invoke_in_process(["data", "synth", "--recipe", "smoke", "--out", str(tmp_path / "data")]) == 130
    assert invoke_in_process(["data", "synth", "--recipe", "no-such-recipe", "--out", str(tmp_path / "data")]) == 2


def test_the_report_names_the_gpu_it_ran_on():
    """The quickstart report's machine line is the bench's (one owner): CPU, cores, GEMM speed, and the GPU by the
    name `latency.gpu_info` records. Break caught: the report reading the GPU name under a key `gpu_info` never
    writes ("name"), which made every GPU run say "no GPU"."""
    from fbcompress.pipeline.report import render_markdown

    gpu = {"gpu": "NVIDIA H200", "index": 0, "compute_capability": "9.0", "driver": "570.1", "cuda_runtime": "12.8"}
    base = {"cpu": "AMD EPYC", "usable_cores": 2, "torch_threads": 2, "fp32_matmul_gflops": 40.0,
            "versions": {"torch": "2.13.0"}}
    report = {"models": [], "stages": [], "plots": []}
    on_gpu = render_markdown({**report, "machine": {**base, "gpu": gpu}}, has_weights=False)
    assert "GPU NVIDIA H200 (CC 9.0" in on_gpu and "no GPU" not in on_gpu
    on_cpu = render_markdown({**report, "machine": {**base, "gpu": None}}, has_weights=False)
    line = "Machine: CPU AMD EPYC (2 usable cores, torch threads 2, FP32 GEMM 40 GFLOPS); torch 2.13.0; no GPU."
    assert line in on_cpu


@pytest.mark.parametrize("recipe", [SMOKE, QUICKSTART])
def test_search_stages_read_and_write_the_documented_paths(recipe, tmp_path):
    """The search stack: OUT/retriever from the teacher, OUT/index and OUT/query-encoder from the retriever, the
    search bundle OUT/bundles/search from the query encoder, its INT8 file judged by the gate against the retriever
    over the index, re-ranking by the shipped scorer's INT8 file, and the gated bundle shipped as BUNDLE/search.
    Breaks caught: the index built from the teacher (the zero-shot tower) or the query encoder; the gate judging the
    FP32 graph or the checkpoint; re-ranking with the unshipped student's bundle; the search bundle shipped ungated."""
    out, bundle = tmp_path / "run", tmp_path / "bundle"
    stages = stages_by_name(recipe, out, bundle)
    search, int8 = out / "bundles" / "search", out / "bundles" / "search" / "query_encoder.int8.onnx"
    assert flag(stages["retriever"].args, "--teacher") == str(out / "teacher")
    assert flag(stages["index"].args, "--model") == str(out / "retriever")
    assert flag(stages["query-encoder"].args, "--retriever") == str(out / "retriever")
    assert flag(stages["search-onnx"].args, "--model") == str(out / "query-encoder")
    assert flag(stages["search-onnx"].args, "--out") == str(search)
    assert flag(stages["search-int8"].args, "--model") == str(search)
    assert flag(stages["search-int8"].args, "--index") == str(out / "index")
    assert stages["search-int8"].outputs == [int8] and stages["search-int8"].gate
    assert flag(stages["search-eval"].args, "--model") == str(int8)
    assert flag(stages["search-eval"].args, "--rerank") == str(bundle / "model.int8.onnx")
    check = stages["search-check"]
    assert (flag(check.args, "--teacher"), flag(check.args, "--candidate")) == (str(out / "retriever"), str(int8))
    assert check.gate and check.outputs == [out / "eval" / "search" / "check.json"]
    assert set(stages["ship-search"].after) == {"search-check", "ship"}
    assert stages["ship-search"].outputs == [bundle / "search" / "manifest.json"]


def test_the_search_stages_run_in_order_after_the_scorer_and_ship_into_its_bundle(tmp_path):
    fake = Pipeline()
    results = run_pipeline(tmp_path, fake, SMOKE)
    names = [r.name for r in results]
    assert names[names.index("bench") + 1:] == ["retriever", "index", "query-encoder", "search-onnx", "search-int8",
                                                "search-eval", "search-check", "ship-search", "search-triton",
                                                "search-bench"]
    assert (tmp_path / "bundle" / "search" / "triton" / "fashionbert_query_ensemble" / "config.pbtxt").is_file()
    assert all(r.status == "ran" for r in results if r.name in names[names.index("retriever"):])
    assert (tmp_path / "bundle" / "search" / "query_encoder.int8.onnx").read_text().startswith("int8 of ")


def test_a_failed_search_gate_ships_no_search_bundle_and_is_a_verdict(tmp_path):
    class FailSearchCheck(Pipeline):
        def __call__(self, args):
            if args[0] == "check" and "--index" in args:
                self.calls.append(list(args))
                return 1
            return super().__call__(args)

    results = {r.name: r for r in run_pipeline(tmp_path, FailSearchCheck(), SMOKE)}
    assert results["search-check"].status == "failed" and results["search-check"].gate
    assert results["ship-search"].status == "skipped" and not (tmp_path / "bundle" / "search").exists()
    assert qs.exit_code(list(results.values()), "student") == 0  # the scorer shipped; the search gate said no
