"""Does meta-learning help? Compare a meta-trained run with two baselines on the same data.

    python benchmarks/baselines.py runs/<run> [--episodes 600] [--scratch-steps 100] [--no-maml]

For the run's novel classes it reports, on the same seeded test episodes as `metafew eval`:
  - the run's MAML accuracy (best checkpoint, the run's eval settings),
  - pixel 1-nearest-neighbour (Euclidean distance between raw pixels),
  - the same Conv-4 trained from scratch on each episode's support set (fresh seeded init,
    full-batch Adam; every learning rate in --scratch-lrs is tried and the best one on the test
    episodes is reported, which flatters the baseline),
each as mean ± 95% CI. When the dataset has unlabeled pictures with known answers it also scores
the three ways of labeling them: `finetune` + `predict` of the run, 1-NN against all labeled
pictures, and the scratch network trained on all labeled pictures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from metafew.allocator import tune_allocator
from metafew.checkpoints import load_checkpoint
from metafew.config import Config
from metafew.data import load_data, to_float
from metafew.evaluation import confidence_interval, evaluate, queries_per_class
from metafew.finetuning import finetune, predict_proba
from metafew.functional import Params
from metafew.learner import build_learner, load_params, norm_stats
from metafew.models import build_model
from metafew.runs import load_run_config
from metafew.tasks import EpisodeSampler, stack_episodes


def pixel_nn(support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
    """1-NN labels for query_x [Q, C, H, W] from support_x [S, C, H, W], support_y [S]."""
    dist = torch.cdist(query_x.flatten(1), support_x.flatten(1))
    return support_y[dist.argmin(dim=1)]


def fresh_params(cfg: Config, count: int, seed: int) -> Params:
    """`count` independent default initialisations of the run's model: {name: [count, ...]}."""
    models = []
    for k in range(count):
        torch.manual_seed(seed + k)
        models.append(build_model(cfg.model, cfg.data.channels, cfg.data.image_size, cfg.task.ways))
    return {
        n: torch.stack([dict(m.named_parameters())[n].detach() for m in models])
        for n, _ in models[0].named_parameters()
    }


def train_scratch(forward, params: Params, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> Params:
    """Full-batch Adam from `params` on every task at once: params {name: [T, ...]},
    x [T, N, C, H, W], y [T, N]. Adam is elementwise, so batching it over tasks is exact."""
    loss_grad = vmap(grad(lambda p, a, b: F.cross_entropy(forward(p, a), b)), in_dims=(0, 0, 0))
    m = {k: torch.zeros_like(v) for k, v in params.items()}
    v2 = {k: torch.zeros_like(v) for k, v in params.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        g = loss_grad(params, x, y)
        for k in params:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v2[k] = b2 * v2[k] + (1 - b2) * g[k] ** 2
            step = lr * (m[k] / (1 - b1**t)) / ((v2[k] / (1 - b2**t)).sqrt() + eps)
            params[k] = params[k] - step
    return params


def scratch_episode_accuracy(
    cfg, learner, sampler, episodes: int, steps: int, lr: float, chunk: int = 50
) -> np.ndarray:
    """Query accuracy of a freshly initialised network trained on each episode's support."""
    accs = []
    for start in range(0, episodes, chunk):
        batch = [sampler.episode(i) for i in range(start, min(start + chunk, episodes))]
        sx, sy, qx, qy = stack_episodes(batch)
        params = fresh_params(cfg, len(batch), seed=10_000 + start)
        with torch.no_grad():
            params = train_scratch(learner.forward, params, sx, sy, steps, lr)
            logits = vmap(learner.forward, in_dims=(0, 0))(params, qx)
        accs.extend((logits.argmax(-1) == qy).float().mean(-1).tolist())
    return np.array(accs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--scratch-steps", type=int, default=100)
    parser.add_argument("--scratch-episodes", type=int, default=None, help="default: --episodes")
    parser.add_argument("--scratch-lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument(
        "--no-maml", action="store_true", help="skip re-evaluating the run (see `metafew eval`)"
    )
    args = parser.parse_args()
    tune_allocator()

    cfg = load_run_config(args.run)
    data = load_data(cfg.data)
    learner = build_learner(cfg, torch.device("cpu"), len(data.meta_train.classes))
    load_params(learner, load_checkpoint(args.run / "checkpoints" / "best.pt")["params"])
    queries = queries_per_class(cfg, data.novel)
    sampler = EpisodeSampler(data.novel, cfg.task.ways, cfg.task.shots, queries, cfg.eval.seed, "novel")
    results: dict[str, dict] = {}

    def report(name: str, accs: np.ndarray, seconds: float) -> None:
        mean, ci = confidence_interval(accs)
        results[name] = {"accuracy": mean, "ci95": ci, "episodes": len(accs), "seconds": seconds}
        print(f"{name:<40} {100 * mean:6.2f} ± {100 * ci:.2f}%   ({seconds:.0f}s)", flush=True)

    print(
        f"{args.episodes} test episodes: {cfg.task.ways}-way {cfg.task.shots}-shot, {queries} queries/class, "
        f"dataset {cfg.data.dataset}, novel classes {', '.join(data.novel.classes)}"
    )
    if not args.no_maml:
        t = time.perf_counter()
        steps, lr = cfg.algorithm.eval_inner_steps, None  # None: the algorithm's own step size
        accs = evaluate(learner, sampler, args.episodes, steps, lr, cfg.eval.norm, cfg.eval.chunk_size)
        report(
            f"MAML ({cfg.algorithm.eval_inner_steps} steps, {cfg.eval.norm} BN)",
            accs,
            time.perf_counter() - t,
        )
    t = time.perf_counter()
    nn_accs = []
    for i in range(args.episodes):
        sx, sy, qx, qy = sampler.episode(i).as_tuple()
        nn_accs.append(float((pixel_nn(sx, sy, qx) == qy).float().mean()))
    report("pixel 1-NN", np.array(nn_accs), time.perf_counter() - t)
    for lr in args.scratch_lrs:
        t = time.perf_counter()
        episodes = args.scratch_episodes or args.episodes
        accs = scratch_episode_accuracy(cfg, learner, sampler, episodes, args.scratch_steps, lr)
        report(
            f"Conv-4 from scratch (Adam {lr:g}, {args.scratch_steps} steps)", accs, time.perf_counter() - t
        )

    if data.unlabeled is not None and data.unlabeled.answers is not None:
        score_unlabeled(cfg, learner, data, args, results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


def score_unlabeled(cfg, learner, data, args, results: dict) -> None:
    """Accuracy on the unlabeled pictures: finetune+predict, 1-NN, scratch on all labeled."""
    classes = data.novel.classes
    truth = torch.tensor([classes.index(a) for a in data.unlabeled.answers])
    lx, ly, ux = to_float(data.novel.images), data.novel.labels, to_float(data.unlabeled.images)
    model, _ = finetune(cfg, learner, data.novel)
    maml = (predict_proba(learner, model, data.unlabeled.images).argmax(-1) == truth).float().mean()
    nn = (pixel_nn(lx, ly, ux) == truth).float().mean()
    print(
        f"unlabeled pictures ({len(truth)}): finetune+predict {100 * float(maml):.1f}%, "
        f"pixel 1-NN {100 * float(nn):.1f}%"
    )
    results["unlabeled"] = {"finetune_predict": float(maml), "pixel_nn": float(nn)}
    for lr in args.scratch_lrs:
        accs = []
        for seed in range(5):  # five fresh initialisations; predict with the labeled set's BN statistics
            params = fresh_params(cfg, 1, seed=20_000 + seed)
            with torch.no_grad():
                params = train_scratch(learner.forward, params, lx[None], ly[None], args.scratch_steps, lr)
                single = {k: v[0] for k, v in params.items()}
                stats = norm_stats(learner, single, lx)
                accs.append(float((learner.forward(single, ux, stats).argmax(-1) == truth).float().mean()))
        print(f"  Conv-4 from scratch (Adam {lr:g}): {100 * np.mean(accs):.1f}% (mean of 5 inits)")
        results["unlabeled"][f"scratch_adam_{lr:g}"] = float(np.mean(accs))


if __name__ == "__main__":
    main()
