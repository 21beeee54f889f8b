"""How should a meta-batch run: task by task (`loop`) or vectorised (`vmap`, in chunks)?

    python benchmarks/batching.py [--repeats 5] [--steps 4] [--queries 15 1]

For each setting (5-way 5-shot Conv-4 on 28x28 glyphs, second-order MAML, meta-batch 4) and each
mode, a fresh subprocess times `--steps` meta-gradient computations after one warm-up, `--repeats`
times, interleaving the modes so that drifting machine speed hits all of them alike; it prints
the median tasks/s, the ratio to `loop` and the peak resident memory of the subprocess.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

MODES = {
    "loop": ("loop", 0),
    "vmap": ("vmap", 0),
    "vmap chunk 2": ("vmap", 2),
    "fused": ("fused", 0),
    "default": ("auto", 0),
}
"""mode: (runtime.batching, runtime.chunk_size), with runtime.max_memory=0 (no split), and the default
config (`auto` with the default runtime.max_memory)."""

CHILD = r"""
import json, resource, sys, time, torch
from metafew.config import Config
from metafew.data import load_data
from metafew.allocator import tune_allocator
from metafew.learner import build_learner
from metafew.tasks import EpisodeSampler
batching, malloc = sys.argv[1], sys.argv[5]
chunk, queries, steps = (int(a) for a in sys.argv[2:5])
if malloc == "tuned":
    tune_allocator()
cfg = Config()
cfg.runtime.batching, cfg.runtime.chunk_size, cfg.task.queries = batching, chunk, queries
if batching != "auto":
    cfg.runtime.max_memory = 0
data = load_data(cfg.data)
sampler = EpisodeSampler(data.meta_train, 5, 5, queries, 0)
learner = build_learner(cfg, torch.device("cpu"), len(data.meta_train.classes))
size = cfg.train.meta_batch_size
learner.algorithm.meta_gradients(learner.params, sampler.batch(0, size), 0)
start = time.perf_counter()
for it in range(1, steps + 1):
    learner.algorithm.meta_gradients(learner.params, sampler.batch(it, size), it)
seconds = time.perf_counter() - start
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"tasks_per_s": steps * size / seconds, "peak_mb": peak_mb}))
"""


def measure(mode: str, queries: int, steps: int, malloc: str) -> dict:
    batching, chunk = MODES[mode]
    out = subprocess.run(
        [sys.executable, "-c", CHILD, batching, str(chunk), str(queries), str(steps), malloc],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--queries", type=int, nargs="+", default=[15, 1])
    parser.add_argument("--malloc", nargs="+", default=["tuned", "default"])
    args = parser.parse_args()
    for malloc in args.malloc:
        for queries in args.queries:
            runs: dict[str, list[dict]] = {m: [] for m in MODES}
            for _ in range(args.repeats):
                for mode in MODES:
                    runs[mode].append(measure(mode, queries, args.steps, malloc))
            base = statistics.median(r["tasks_per_s"] for r in runs["loop"])
            print(
                f"\n5-way 5-shot, {queries} queries/class, meta-batch 4, {malloc} malloc, "
                f"{args.repeats} repeats"
            )
            print(f"{'mode':<14} {'tasks/s':>8} {'x loop':>7} {'peak MB':>8}")
            for mode, results in runs.items():
                speed = statistics.median(r["tasks_per_s"] for r in results)
                peak = statistics.median(r["peak_mb"] for r in results)
                print(f"{mode:<14} {speed:8.2f} {speed / base:6.2f}x {peak:8.0f}")


if __name__ == "__main__":
    main()
