#!/usr/bin/env bash
# Mutation testing of the core modules with mutmut: how many one-line bugs would the fast test tier notice?
# A benchmark, not CI (a full run takes tens of minutes on 2 cores). Runs in a scratch copy of the HEAD commit,
# so the working tree never holds mutants, then writes the kill rate per module and every surviving mutant's
# diff to bench/results/<machine>-<date>-mutation/ (README.md, kill-rates.json, survivors.md).
#   bash bench/mutation.sh                          # the core modules (below)
#   bash bench/mutation.sh fbcompress/core/errors.py  # just these modules (a path or a glob per argument)
#   OUT=DIR MAX_CHILDREN=2 bash bench/mutation.sh   # where results go; parallel test workers
#   DROP_TESTS="tests/a.py tests/b.py" ...          # leave these test files out (a before/after comparison)
#   REV=COMMIT ...                                  # mutate and test that commit (default HEAD)
#   HANG_SECONDS=600 ...                            # CPU seconds after which a mutant's test run counts as hung
#   MUTANTS="a.x_f__mutmut_1 b.*" CARRY=DIR ...     # check only these mutants (names or globs); the others keep
#                                                   # DIR's caught verdicts where their function is unchanged
# Test selection: the fast tier (`make test-fast`, pytest -m "not slow"); mutmut runs, per mutant, only the tests
# that executed the mutated function (its coverage stats), so a mutant no fast test reaches is "no tests".
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-.venv/bin/python}
MUTMUT=$(realpath -m "${MUTMUT:-$(dirname "$PY")/mutmut}")
CORE=(
  fbcompress/evaluation/metrics.py fbcompress/evaluation/tolerance.py fbcompress/runtime/scoring.py
  fbcompress/training/adaptive_loss.py fbcompress/training/masking.py fbcompress/core/distributed.py
  fbcompress/training/loop.py fbcompress/data/batching.py fbcompress/release/check.py fbcompress/quantize/measure.py
  fbcompress/quantize/fallback.py fbcompress/bundle/store.py fbcompress/bundle/manifest.py fbcompress/core/errors.py
  fbcompress/modeling/checkpoint.py fbcompress/release/verdict.py
)
MODULES=("${@:-${CORE[@]}}")
if [ ! -x "$MUTMUT" ]; then
  echo "mutmut is not installed in $(dirname "$PY"): $PY -m pip install 'mutmut==3.8.1' (or: make mutation)" >&2
  exit 2
fi
for module in "${MODULES[@]}"; do
  compgen -G "$module" >/dev/null || { echo "error: no module matches $module" >&2; exit 2; }
done
STAMP=$(date +%Y-%m-%d)
SLUG=$("$PY" -c "from fbcompress.evaluation.latency import machine_info, machine_slug; print(machine_slug(machine_info(None), 'cpu'))")
OUT=${OUT:-bench/results/$SLUG-$STAMP-mutation}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
REV=$(git rev-parse --short "${REV:-HEAD}")  # resolved now: the report names what was tested
# the commit, not uncommitted edits; the results folders are left out (the index stays: the README links to it)
git archive "$REV" -- . ':!bench/results/amd-*' | tar -xf - -C "$WORK"
for dropped in ${DROP_TESTS:-}; do
  [ -f "$WORK/$dropped" ] || { echo "error: DROP_TESTS names $dropped, which is not a tracked file" >&2; exit 2; }
  rm "$WORK/$dropped"
done
{
  echo "[mutmut]"
  echo "source_paths=fbcompress"
  echo "only_mutate="
  printf '    %s\n' "${MODULES[@]}"
  echo "also_copy="  # besides the tests: the files the README tests read
  printf '    %s\n' README.md docs bench
  echo "pytest_add_cli_args=-q"
  printf '    %s\n' -p no:cacheprovider -m "not slow"
  echo "pytest_add_cli_args_test_selection=tests"
} >"$WORK/setup.cfg"
start=$SECONDS
# mutmut's own timeout is a CPU limit scaled by the slowest test that covers the mutant: a mutant that turns a
# fast loop into an endless one can spin for many minutes. Such a worker is ended after HANG_SECONDS of CPU and
# recorded by mutmut as killed by a signal, which the report counts as a timeout (the tests would never pass).
# HANG_SECONDS must stay above the CPU time of the slowest honest run: a surviving mutant runs every fast test that
# covers its function (minutes for bundle writing, checkpoints and training), and a watchdog below that would
# record such a survivor as a caught hang.
(
  while sleep 5; do
    for pid in $(pgrep -f "^mutmut: " || true); do
      cpu=$(ps -o times= -p "$pid" 2>/dev/null | tr -d ' ')
      if [ -n "$cpu" ] && [ "$cpu" -gt "${HANG_SECONDS:-600}" ]; then kill -9 "$pid" 2>/dev/null || true; fi
    done
  done
) &
watchdog=$!
trap 'kill $watchdog 2>/dev/null; rm -rf "$WORK"' EXIT
read -r -a SELECTED <<<"${MUTANTS:-}"
[ -z "${CARRY:-}" ] || [ -f "$CARRY/statuses.json" ] || { echo "error: CARRY=$CARRY has no statuses.json" >&2; exit 2; }
(cd "$WORK" && "$MUTMUT" run --max-children "${MAX_CHILDREN:-2}" "${SELECTED[@]}" >"$WORK/mutmut-run.log" 2>&1) || {
  echo "error: mutmut run failed (last lines of its log:)" >&2
  tail -20 "$WORK/mutmut-run.log" >&2
  exit 1
}
mkdir -p "$OUT"
"$PY" bench/mutation_report.py "$WORK" "$OUT" --seconds $((SECONDS - start)) --commit "$(git rev-parse --short "$REV")" \
  --modules "${MODULES[@]}" --dropped-tests ${DROP_TESTS:-} ${CARRY:+--carry "$CARRY"}
echo "wrote $OUT/README.md, kill-rates.json, survivors.md" >&2
