"""Choose a recipe without the test classes: score a run's checkpoint on its *validation* classes.

    python benchmarks/validation_episodes.py RUN [--ways 5] [--shots 1] [--queries 15]
        [--episodes 600] [--seed 777] [--checkpoint best|last] [--threads 1]

`metafew eval` scores the novel (test) classes; recipes are chosen here instead, on the run's
meta-validation classes (e.g. Omniglot's `data.omniglot.val_alphabets`), with N-way K-shot
episodes that may differ from the run's training episodes where the algorithm allows it
(eval.ways: ProtoNet, pretrain). The episodes are seeded (`--seed`, not eval.seed: another stream
than the run's own validations), the adaptation is the algorithm's own, as in `metafew eval`.
Prints one line: run, checkpoint, iteration, setting, mean ± 95% CI.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from metafew.evaluation import confidence_interval, evaluate
from metafew.launch import load_run_data
from metafew.stages.common import meta_learner, run_config
from metafew.tasks import EpisodeSampler


def validation_accuracy(
    run: Path, ways: int, shots: int, queries: int, episodes: int, seed: int, checkpoint: str, threads: int
) -> tuple[float, float, int]:
    """(mean, 95% CI half-width, checkpoint iteration) over `episodes` validation episodes."""
    cfg = run_config(run, [f"runtime.threads={threads}"], ("runtime",))
    setting = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, ways=ways, shots=shots))
    val = load_run_data(cfg, run, None).meta_val
    if val is None:
        raise SystemExit(f"{run}: the run has no validation classes (data.*): nothing to score")
    learner, saved = meta_learner(run, cfg, checkpoint, setting)
    sampler = EpisodeSampler(val, ways, shots, queries, seed, "meta_val")
    accs = evaluate(learner, sampler, episodes, cfg.algorithm.eval_inner_steps, None, cfg.eval.norm)
    mean, ci = confidence_interval(accs)
    return mean, ci, saved.iteration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--threads", type=int, default=1)
    a = parser.parse_args()
    mean, ci, iteration = validation_accuracy(
        a.run, a.ways, a.shots, a.queries, a.episodes, a.seed, a.checkpoint, a.threads
    )
    print(
        f"{a.run.name} {a.checkpoint}.pt (iteration {iteration}): validation {a.ways}-way {a.shots}-shot "
        f"{100 * mean:.2f} ± {100 * ci:.2f}% ({a.episodes} episodes)"
    )


if __name__ == "__main__":
    main()
