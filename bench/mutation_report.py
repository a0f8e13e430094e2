"""Kill rate per module from a finished `mutmut run` (bench/mutation.sh calls this; it reads mutmut's own files).

    python bench/mutation_report.py WORK_DIR OUT_DIR [--seconds S] [--commit C] [--modules M ...] [--carry DIR]
    python bench/mutation_report.py --uncaught DIR   # the names of DIR's mutants not caught (for MUTANTS=)

WORK_DIR is the scratch copy mutmut ran in (it holds mutants/**/*.py.meta: each mutant's test exit code). Kill rate =
killed / (mutants − equivalent): a mutant that survives, that no fast test reaches ("no tests") or that hangs past
mutmut's timeout without being killed counts against it. Equivalent mutants (no test can tell them from the
original) are listed by hand in bench/mutation_equivalent.json with the reason, keyed by mutant name and pinned
to the mutated line, so an entry whose code changed stops counting instead of hiding a new survivor (an entry
also matches the mutant of the same function with the same mutated line, when an edit above it renumbered it).

Every report also writes statuses.json (each mutant's status and the hash mutmut gives its function). `--carry
DIR` reads an earlier report's statuses.json: a mutant this run did not check (a rerun of named mutants, e.g. the
last run's survivors after new tests) keeps the earlier verdict, caught or not, when its function is unchanged
(same hash: the same mutant of the same code). Tests are only ever added between such runs, so a kill still holds
and a survivor not rechecked stays a survivor; the report says how many verdicts were carried. `--statuses FILE`
reads the verdicts from a report's statuses.json instead of WORK_DIR's mutmut files (WORK_DIR then only needs the
generated mutants, for `mutmut show`): a report made again with another --carry.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT = ROOT / "bench" / "mutation_equivalent.json"
# mutmut.stats.status_by_exit_code (mutmut 3.8): 1 and 3 are kills, 0 a survivor, 33/5 no test ran it.
# A mutant that hangs (timeout) or crashes the test process (-9, -11) is caught too: CI would not pass it.
STATUS = {0: "survived", 1: "killed", 3: "killed", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", 37: "killed", -9: "timeout", -11: "timeout"}
CAUGHT = ("killed", "timeout")


def function_of(name: str) -> str:
    """mutmut's function key of a mutant: `pkg.mod.x_fn__mutmut_3` -> `x_fn` (methods: `xǁClassǁfn`)."""
    return name.rsplit(".", 1)[-1].rsplit("__mutmut_", 1)[0]


def read_results(work: Path) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """(module path → {mutant name: status}, module path → {mutant name: its function's hash}) from every
    mutants/<module>.meta."""
    out: dict[str, dict[str, str]] = {}
    hashes: dict[str, dict[str, str]] = {}
    for meta in sorted((work / "mutants").rglob("*.py.meta")):
        module = meta.relative_to(work / "mutants").as_posix()[: -len(".meta")]
        data = json.loads(meta.read_text())
        codes = data.get("exit_code_by_key", {})
        by_function = data.get("hash_by_function_name", {})
        out[module] = {name: STATUS.get(code, "not checked" if code is None else "suspicious")
                       for name, code in codes.items()}
        hashes[module] = {name: by_function.get(function_of(name), "") for name in codes}
    return out, hashes


def carry_over(results: dict[str, dict[str, str]], hashes: dict[str, dict[str, str]], earlier: Path) -> int:
    """Fill this run's unchecked mutants from an earlier report's statuses.json where that mutant was judged and
    its function is the same (same hash). Returns how many were carried."""
    before = json.loads((earlier / "statuses.json").read_text())
    carried = 0
    for module, mutants in results.items():
        for name, status in mutants.items():
            old = before.get(module, {}).get(name)
            if (status == "not checked" and old and old["status"] != "not checked" and old["function_hash"]
                    and old["function_hash"] == hashes[module][name]):
                mutants[name] = old["status"]
                carried += 1
    return carried


def mutant_diff(work: Path, mutmut: Path, name: str) -> str:
    shown = subprocess.run([str(mutmut.resolve()), "show", name], cwd=work, capture_output=True, text=True)
    return shown.stdout.strip()


def mutated_line(diff: str) -> str:
    """The '+' line of a mutant's diff: what the mutant changed the code to (the equivalence pin)."""
    added = [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return added[0] if added else ""


def load_equivalent() -> dict[str, dict[str, str]]:
    return json.loads(EQUIVALENT.read_text()) if EQUIVALENT.is_file() else {}


def summarise(results: dict[str, dict[str, str]], equivalent: set[str]) -> list[dict]:
    rows = []
    for module, mutants in results.items():
        counts = Counter(mutants.values())
        eq = sum(1 for name, status in mutants.items() if name in equivalent and status not in CAUGHT)
        # a run stopped early leaves mutants "not checked": they are counted apart, not against the kill rate
        judged = len(mutants) - eq - counts.get("skipped", 0) - counts.get("not checked", 0)
        rows.append({"module": module, "mutants": len(mutants), "killed": counts.get("killed", 0),
                     "survived": counts.get("survived", 0) - sum(1 for n, s in mutants.items()
                                                                 if n in equivalent and s == "survived"),
                     "no_tests": counts.get("no tests", 0), "timeout": counts.get("timeout", 0),
                     "equivalent": eq, "not_checked": counts.get("not checked", 0),
                     "kill_rate": round((counts.get("killed", 0) + counts.get("timeout", 0)) / judged, 4)
                     if judged else None})
    return rows


def uncaught(report: Path) -> list[str]:
    """Every mutant of an earlier report that its run did not catch (survived, no tests, not checked)."""
    statuses = json.loads((report / "statuses.json").read_text())
    return [name for mutants in statuses.values() for name, entry in mutants.items() if entry["status"] not in CAUGHT]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--uncaught"] and len(argv) == 2:
        print("\n".join(uncaught(Path(argv[1]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=int, default=None)
    parser.add_argument("--commit", default="?")
    parser.add_argument("--modules", nargs="*", default=[])
    parser.add_argument("--dropped-tests", nargs="*", default=[], help="test files left out of this run")
    parser.add_argument("--mutmut", type=Path, default=Path(sys.executable).with_name("mutmut"))
    parser.add_argument("--carry", type=Path, default=None, help="an earlier report dir (its statuses.json)")
    parser.add_argument("--statuses", type=Path, default=None, help="verdicts from this statuses.json")
    args = parser.parse_args(argv)

    if args.statuses:
        saved = json.loads(args.statuses.read_text())
        results = {m: {n: e["status"] for n, e in ms.items()} for m, ms in saved.items()}
        hashes = {m: {n: e["function_hash"] for n, e in ms.items()} for m, ms in saved.items()}
    else:
        results, hashes = read_results(args.work)
    if not results:
        print(f"error: no mutmut results under {args.work}/mutants", file=sys.stderr)
        return 2
    carried = carry_over(results, hashes, args.carry) if args.carry else 0
    recorded = load_equivalent()
    # mutmut numbers a function's mutants in order, so an edit above a listed mutant renumbers it: the same
    # mutation of the same function (same mutated line) is still the same equivalent mutant
    recorded_by_line = {(name.rsplit("__mutmut_", 1)[0], entry.get("line")) for name, entry in recorded.items()}
    survivors: dict[str, list[tuple[str, str, str]]] = {}
    equivalent: set[str] = set()
    for module, mutants in results.items():
        for name, status in mutants.items():
            if status in (*CAUGHT, "not checked"):
                continue
            diff = mutant_diff(args.work, args.mutmut, name)
            line = mutated_line(diff)
            entry = recorded.get(name)
            if (entry and entry.get("line") == line) or (name.rsplit("__mutmut_", 1)[0], line) in recorded_by_line:
                equivalent.add(name)
                continue
            survivors.setdefault(module, []).append((name, status, diff))
    rows = summarise(results, equivalent)
    total_killed = sum(r["killed"] + r["timeout"] for r in rows)
    total_judged = sum(r["mutants"] - r["equivalent"] - r["not_checked"] for r in rows)
    from fbcompress.evaluation.latency import machine_info

    machine = machine_info(None)
    payload = {"date": date.today().isoformat(), "commit": args.commit, "machine": machine, "tool": "mutmut 3.8.1",
               "test_selection": 'pytest -m "not slow" (the fast tier), per mutant the tests that ran its function',
               "seconds": args.seconds, "dropped_tests": args.dropped_tests, "modules": rows,
               "carried_from": str(args.carry) if args.carry else None, "carried": carried,
               "total": {"killed": total_killed, "judged": total_judged,
                         "kill_rate": round(total_killed / total_judged, 4) if total_judged else None}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kill-rates.json").write_text(json.dumps(payload, indent=2) + "\n")
    statuses = {module: {name: {"status": status, "function_hash": hashes[module][name]}
                         for name, status in mutants.items()} for module, mutants in results.items()}
    (args.out / "statuses.json").write_text(json.dumps(statuses, indent=1, ensure_ascii=False) + "\n")
    lines = [f"# Mutation testing, {payload['date']} (commit {args.commit})", "",
             f"Machine: {machine.get('cpu', '?')}, {machine.get('usable_cores', '?')} usable cores. Tool: mutmut 3.8.1 "
             f"(`bash bench/mutation.sh`), {payload['test_selection']}. Wall time: {args.seconds} s."
             + (f" Test files left out: {', '.join(args.dropped_tests)}." if args.dropped_tests else "")
             + (f" {carried} verdicts (same function hash) carried from `{args.carry}`: this run checked the "
                "rest." if args.carry else ""), "",
             "| module | mutants | not checked | killed | survived | no tests | timeout | equivalent | kill rate |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rate = f"{r['kill_rate']:.1%}" if r["kill_rate"] is not None else "-"
        lines.append(f"| `{r['module']}` | {r['mutants']} | {r['not_checked']} | {r['killed']} | {r['survived']} | "
                     f"{r['no_tests']} | {r['timeout']} | {r['equivalent']} | {rate} |")
    rate = payload["total"]["kill_rate"]
    lines += [f"| **all** | {sum(r['mutants'] for r in rows)} | {sum(r['not_checked'] for r in rows)} | "
              f"{sum(r['killed'] for r in rows)} | "
              f"{sum(r['survived'] for r in rows)} | {sum(r['no_tests'] for r in rows)} | "
              f"{sum(r['timeout'] for r in rows)} | {sum(r['equivalent'] for r in rows)} | "
              f"{f'{rate:.1%}' if rate is not None else '-'} |", "",
              "Kill rate = (killed + timeout) / (mutants checked − equivalent): a mutant that hangs the tests is "
              "caught too; a run stopped early leaves mutants not checked. "
              "Equivalent mutants are listed with their reason in "
              "`bench/mutation_equivalent.json`; every other survivor is in `survivors.md`."]
    (args.out / "README.md").write_text("\n".join(lines) + "\n")
    out = ["# Surviving mutants", ""]
    for module, items in survivors.items():
        out += [f"## `{module}` ({len(items)})", ""]
        for name, status, diff in items:
            out += [f"### {name} — {status}", "", "```diff", diff, "```", ""]
    (args.out / "survivors.md").write_text("\n".join(out) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
