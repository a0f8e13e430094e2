#!/usr/bin/env bash
# Mutation testing of the core modules with mutmut: how many one-line bugs would the fast test tier notice?
# A benchmark, not CI (a full run takes tens of minutes on 2 cores). Runs in a scratch copy of the tracked files,
# so the working tree never holds mutants, then writes the kill rate per module and every surviving mutant's
# diff to bench/results/<machine>-<date>-mutation/ (README.md, kill-rates.json, survivors.md).
#   bash bench/mutation.sh                          # the core modules (below)
#   bash bench/mutation.sh fbcompress/tolerance.py  # just these modules (a path or a glob per argument)
#   OUT=DIR MAX_CHILDREN=2 bash bench/mutation.sh   # where results go; parallel test workers
# Test selection: the fast tier (`make test-fast`, pytest -m "not slow"); mutmut runs, per mutant, only the tests
# that executed the mutated function (its coverage stats), so a mutant no fast test reaches is "no tests".
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-.venv/bin/python}
MUTMUT=$(realpath -m "${MUTMUT:-$(dirname "$PY")/mutmut}")
CORE=(
  fbcompress/evaluate.py fbcompress/tolerance.py fbcompress/adaptive_loss.py fbcompress/masking.py
  fbcompress/data/batching.py fbcompress/check.py fbcompress/quantize/measure.py fbcompress/quantize/fallback.py
  fbcompress/export/bundle.py fbcompress/checkpoint.py fbcompress/distributed.py fbcompress/train.py
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
SLUG=$("$PY" -c "from fbcompress.latency import machine_info, machine_slug; print(machine_slug(machine_info(None), 'cpu'))")
OUT=${OUT:-bench/results/$SLUG-$STAMP-mutation}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
git ls-files | grep -v '^bench/results/' | tar -cf - -T - | tar -xf - -C "$WORK"
{
  echo "[mutmut]"
  echo "source_paths=fbcompress"
  echo "only_mutate="
  printf '    %s\n' "${MODULES[@]}"
  echo "also_copy=recipes"
  echo "pytest_add_cli_args=-q"
  printf '    %s\n' -p no:cacheprovider -m "not slow"
  echo "pytest_add_cli_args_test_selection=tests"
} >"$WORK/setup.cfg"
start=$SECONDS
(cd "$WORK" && "$MUTMUT" run --max-children "${MAX_CHILDREN:-2}" >"$WORK/mutmut-run.log" 2>&1) || {
  echo "error: mutmut run failed (last lines of its log:)" >&2
  tail -20 "$WORK/mutmut-run.log" >&2
  exit 1
}
mkdir -p "$OUT"
"$PY" bench/mutation_report.py "$WORK" "$OUT" --seconds $((SECONDS - start)) --commit "$(git rev-parse --short HEAD)" \
  --modules "${MODULES[@]}"
echo "wrote $OUT/README.md, kill-rates.json, survivors.md" >&2
