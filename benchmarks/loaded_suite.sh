#!/usr/bin/env bash
# The whole test suite N times on a clean clone, each time beside a CPU-bound metafew training
# (issue 15: "5/5 green on a machine with a concurrent CPU-bound job").
#   bash benchmarks/loaded_suite.sh [RUNS=5] [WORKDIR=/tmp/metafew-loaded]
# Prints one line per run: exit code, seconds, pytest's summary. Needs the shared datasets at
# $METAFEW_SHARED_DATA (default: ../shared/datasets beside this checkout).
set -u
runs=${1:-5}
work=${2:-/tmp/metafew-loaded}
repo=$(cd "$(dirname "$0")/.." && pwd)
shared=${METAFEW_SHARED_DATA:-$(cd "$repo/.." && pwd)/shared/datasets}
rm -rf "$work" && git clone -q "$repo" "$work/clone" && cd "$work/clone" || exit 1
python3 -m venv .venv && . .venv/bin/activate && pip install -q torch==2.13.0 -e '.[dev]' > "$work/install.log" 2>&1
for i in $(seq 1 "$runs"); do
  ( while true; do
      metafew train --config configs/maml_5w5s.yaml train.iterations=100000 train.val_every=0 \
        runtime.threads=2 train.runs_dir="$work/load_runs" > /dev/null 2>&1
    done ) &
  load=$!
  sleep 5
  start=$(date +%s)
  METAFEW_SHARED_DATA="$shared" python -m pytest -q -p no:cacheprovider > "$work/run$i.log" 2>&1
  rc=$?
  echo "run $i rc=$rc $(( $(date +%s) - start ))s $(tail -1 "$work/run$i.log")"
  kill $load 2>/dev/null; pkill -f "train.runs_dir=$work/load_runs"; sleep 2
  rm -rf "$work/load_runs"
done
