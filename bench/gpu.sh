#!/usr/bin/env bash
# The GPU run in one command, 8 minutes at most: the CUDA tests (pytest -m cuda), then bench.py on the
# GPU (cases a, b and c: bert-base-shaped random weights for the MFU cases, MiniLM at real lengths), then
# (d), torch.compile, if time is left. Every table and test report goes into one Markdown file.
#
#   bash bench/gpu.sh [--dry-run] [RESULTS]      (default RESULTS: bench/results/gpu.md)
#
# --dry-run checks the script's own logic on a machine without a GPU: the same steps, time limits and
# results file, with the CUDA tests (which then skip) and bench.py --device cpu --quick --cases a.
# Weights and data must be in place (make test fetches them); PY picks the Python (default: python).
set -u
cd "$(dirname "$0")/.."
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
results=${1:-bench/results/gpu.md}
PY=${PY:-python}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
limit=${GPU_SH_LIMIT_S:-480}
end=$((SECONDS + limit))
mkdir -p "$(dirname "$results")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

step() {  # step TITLE SECONDS COMMAND...: run with at most SECONDS (and never past the total limit)
  local title=$1 want=$2 left=$((end - SECONDS))
  shift 2
  [ "$want" -gt "$left" ] && want=$left
  if [ "$want" -lt 20 ]; then
    printf '\n## %s\n\nnot run: the total time limit (%d s) was reached\n' "$title" "$limit" >> "$results"
    return 0
  fi
  printf '\n## %s\n\n`%s` (limit %d s)\n\n```\n' "$title" "$*" "$want" >> "$results"
  timeout --signal=INT --kill-after=10 "$want" "$@" >> "$results" 2>&1
  local rc=$?
  printf '```\n\nexit %d%s\n' "$rc" "$([ $rc -eq 124 ] && echo ', cut off at its time limit')" >> "$results"
  echo "$title: exit $rc" >&2
}

tables() {  # bench.py's tables so far: it rewrites bench.md after every case, so a cut-off run keeps its cases
  [ -f "$tmp/$1/bench.md" ] && { printf '\n### tables\n\n' >> "$results"; cat "$tmp/$1/bench.md" >> "$results"; }
  return 0
}

if [ $dry -eq 1 ]; then dev=cpu; fast="--quick --cases a"; else dev=cuda; fast=""; fi
{
  echo "# minift on $( [ $dry -eq 1 ] && echo 'CPU (gpu.sh --dry-run: not a GPU measurement)' || $PY -c 'import torch; print(torch.cuda.get_device_name())')"
  echo
  echo "$(date -u +%FT%TZ), $($PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)')"
} > "$results"
step "pytest -m cuda" 150 "$PY" -m pytest -m cuda -q -rs tests/test_cuda.py
# shellcheck disable=SC2086  # $fast is a list of flags
step "bench.py --device $dev, cases a b c" 270 "$PY" bench/bench.py --device $dev --out "$tmp/abc" ${fast:---cases abc}
tables abc
if [ $dry -eq 0 ]; then
  step "bench.py --device cuda, case d (torch.compile)" 120 "$PY" bench/bench.py --device cuda --out "$tmp/d" --cases d
  tables d
fi
echo "results: $results ($((SECONDS)) s)" >&2
