"""Evaluation speed and memory against `eval.chunk_size` (episodes per vmap call).

    python benchmarks/eval_chunk.py [--chunks 1 5 10 20] [--episodes 40] [--threads 1]

Each chunk size runs in a fresh process (so peak RSS is its own) on the seed setting's novel
glyph classes: 5-way 5-shot, 10 queries, 10 inner steps, untrained Conv-4 (the cost does not
depend on the weights). Prints episodes/s and peak resident memory.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = r"""
import resource, sys, time, torch
from metafew.config import Config
from metafew.data import load_data
from metafew.allocator import tune_allocator
from metafew.evaluation import evaluate
from metafew.learner import build_learner
from metafew.tasks import EpisodeSampler
tune_allocator()
chunk, episodes, threads = (int(a) for a in sys.argv[1:4])
torch.set_num_threads(threads)
cfg = Config()
data = load_data(cfg.data)
sampler = EpisodeSampler(data.novel, 5, 5, 10, 1234)
learner = build_learner(cfg, torch.device("cpu"), len(data.meta_train.classes))
evaluate(learner, sampler, chunk, 10, None, "transductive", chunk)
start = time.perf_counter()
evaluate(learner, sampler, episodes, 10, None, "transductive", chunk)
speed = episodes / (time.perf_counter() - start)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"chunk {chunk:>3}: {speed:6.2f} episodes/s, peak {peak:6.0f} MB")
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    for chunk in args.chunks:
        cmd = [sys.executable, "-c", CHILD, str(chunk), str(args.episodes), str(args.threads)]
        print(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
