#!/usr/bin/env bash
# Issue 5 on a CUDA card, in one go (run it from the repository root when a GPU is lent):
#     METAFEW_SHARED_DATA=/path/to/shared/datasets bash benchmarks/gpu_check.sh [out_dir]
# 1. benchmarks/maml_speed.py --device cuda --sections device: the issue's workload (Omniglot
#    Conv-4, 5-way 1-shot, meta-batch 32, second order) with metafew's default (fused), vmap and a
#    plain per-task loop, 1 and 15 queries per class: tasks/s, torch's peak CUDA allocation, the
#    card's fp32 GEMM rate and max |Δ meta-gradient| against a float64 CPU reference.
# 2. a 300-iteration Omniglot training run (the minimal background sets) on the card, timed, with
#    its metrics (tasks/s per logged step) and peak CUDA memory.
# Everything lands in out_dir (default $OUT, else gpu_check/): one log per part and summary.txt.
set -euo pipefail
OUT_DIR=${1:-${OUT:-gpu_check}}
DATA=${METAFEW_SHARED_DATA:-../shared/datasets}
PY=${PYTHON:-python}
mkdir -p "$OUT_DIR"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{
  echo "date: $(date -u +%FT%TZ)  commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} | tee "$OUT_DIR/summary.txt"

"$PY" benchmarks/maml_speed.py --device cuda --sections device --repeats 3 --steps 10 --queries 1 15 \
  2>&1 | tee "$OUT_DIR/maml_speed_cuda.log"

# the training run: MAML's Omniglot settings with the paper's meta-batch of 32
"$PY" - "$DATA/omniglot" "$OUT_DIR" <<'PY' 2>&1 | tee "$OUT_DIR/train_cuda.log"
import json, subprocess, sys, time
from pathlib import Path

import torch

root, out = sys.argv[1], Path(sys.argv[2])
runs = out / "runs"
cmd = [sys.executable, "-m", "metafew", "train", "--config", "configs/omniglot_5w1s.yaml",
       f"data.root={root}", "train.iterations=300", "runtime.device=cuda", "train.meta_batch_size=32",
       "train.val_every=0", "train.log_every=10", f"train.runs_dir={runs}"]
print(" ".join(cmd), flush=True)
start = time.perf_counter()
subprocess.run(cmd, check=True)
seconds = time.perf_counter() - start
run = max(runs.iterdir(), key=lambda p: p.stat().st_mtime)
metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
speeds = [m["tasks_per_s"] for m in metrics if "tasks_per_s" in m]
print(json.dumps({"card": torch.cuda.get_device_name(), "wall_s": round(seconds, 1),
                  "tasks_per_s_last": speeds[-1] if speeds else None, "run": str(run)}))
PY
# peak CUDA memory of the training run's meta-steps, measured in-process on the same settings
"$PY" - "$DATA/omniglot" <<'PY' 2>&1 | tee -a "$OUT_DIR/train_cuda.log"
import sys, time
from pathlib import Path

import torch

from metafew.config_load import load_config
from metafew.data import load_data
from metafew.engine import build_optimizer, training_samplers
from metafew.learner import build_learner

cfg = load_config(Path("configs/omniglot_5w1s.yaml"), [f"data.root={sys.argv[1]}", "runtime.device=cuda",
                                                   "train.meta_batch_size=32"])
data = load_data(cfg.data)
learner = build_learner(cfg, torch.device("cuda"), len(data.meta_train.classes))
opt = build_optimizer(cfg, learner.params)
sampler = training_samplers(cfg, data)[0]
torch.cuda.reset_peak_memory_stats()
start, steps = time.perf_counter(), 30
for it in range(steps):
    episodes = [e.to(learner.device) for e in sampler.batch(it, 32)]
    grads = learner.algorithm.meta_gradients(learner.params, episodes, it).grads
    for k, p in learner.params.items():
        p.grad = grads[k]
    opt.step()
torch.cuda.synchronize()
print(f"in-process: {steps * 32 / (time.perf_counter() - start):.1f} tasks/s (sampling included), "
      f"peak CUDA memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MB on {torch.cuda.get_device_name()}")
PY
tail -n 30 "$OUT_DIR/maml_speed_cuda.log" "$OUT_DIR/train_cuda.log" >> "$OUT_DIR/summary.txt"
