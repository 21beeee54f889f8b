"""Issue 13, item 5: equal compute against learn2learn, the same wall time on the same data.

    python benchmarks/equal_compute.py [--minutes 15,60] [--episodes 600] [--seed 1234] [--threads 2]
        [--scale 1] [--together] [--omniglot ../shared/datasets/omniglot]
        [--peers-python /work/peers-venv/bin/python] [--out runs/equal-compute]

What is measured: test accuracy of second-order MAML on Omniglot 5-way 1-shot after the same
minutes of training, once by metafew (`metafew train -c omniglot_maml_5w1s`) and once by
learn2learn 0.2.0's `MAML(model, lr=α, first_order=False)`, with the minutes trained, the
iterations and the tasks per second of each.

metafew: one run of the shipped recipe, trained in stages as benchmarks/time_to_accuracy.py does
(`train.time_limit=T1`, then `--resume` to T2, ...: the run at T2 is the run at T1 trained
further), with data.root=--omniglot, runtime.threads=--threads and runtime.device=cpu.
learn2learn: a child process in the peers' venv (`--peers-python` or $METAFEW_PEERS_PYTHON;
install with `bash benchmarks/install_peers.sh`) trains the way learn2learn's own Omniglot MAML
example does (per task: clone, adapt on the support set, query loss backward; gradients × 1/T;
one Adam step), resumed from its state at the previous limit, and saves its weights, Adam state,
task stream, iterations and seconds at each limit. Its wall time is checked after every step, as
metafew's train.time_limit is, so each side overshoots a limit by up to one step.

What is equal: the recipe's hyper-parameters (α = 0.4, 1 inner step, β = 1e-3 Adam, meta-batch
8, 15 queries per class), the network (PeerConv4 below: metafew's stride-2 Conv-4 with BatchNorm
on batch statistics, the same parameter names, checked against metafew's by the tests), the
initial weights (metafew's, built as metafew.learner.build_learner builds them from the run's
config), the meta-train pictures (exported from metafew's data loading of the run: Balinese,
Greek, Korean, Latin and their 90/180/270° rotations, as uint8; the child draws its own 5-way
1-shot 15-query tasks from them), torch.set_num_threads(--threads), glibc's malloc tuning (the
child gets metafew's mallopt settings through MALLOC_MMAP_MAX_ and MALLOC_TRIM_THRESHOLD_) and
the CPU: the sides run one after the other, never at once, or with `--together` both at once
(`--threads 1` on 2 cores: one core each, the same memory bus and caches shared alike, and any
other load on the machine falls on both), which measures 15 and 60 minutes in 60 minutes of wall
time instead of 120; scoring runs between the stages, when neither side trains. Not equal, in
metafew's disfavour: its minutes include its validations (100 Early_Aramaic episodes every 500
updates, ~2%) and checkpoint writes, but for those after its last step (minutes trained: the
elapsed_s of the last step's line in metrics.jsonl, which train.time_limit is checked against).

Scoring: one function (`score`) scores both sides' weights on the same `--episodes` seeded test
episodes (eval.seed `--seed`) of Japanese (katakana), Sanskrit and Tagalog through metafew's
evaluator, as `metafew eval` does for the algorithm's own adaptation (eval_inner_steps = 3,
eval.norm), mean ± 95% CI. The rule is the same for both: the LAST weights at each limit
(metafew's last.pt, not best.pt, which is chosen on validation classes that learn2learn does not
see).

`--scale S` multiplies every limit (0.01 turns 15 minutes into 9 s: a smoke run). Everything goes
into `--out`: `runs/metafew/` the run, `metafew/` and `learn2learn/` the weights at each limit
(`at-<minutes>min.pt`), learn2learn's exported pictures (`meta_train.pt`) and initial weights
(`init.pt`), the child processes' logs (`<implementation>.<minutes>.train.log`), `results.json`
(rewritten after every point) and `results.md` (the table). Running the same command again skips
every point already in results.json; limits can be added, but only above those measured.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    import numpy as np

    from metafew.config import Config
    from metafew.data import FewShotData, LabeledImages

ROOT = Path(__file__).resolve().parent.parent
RECIPE = "omniglot_maml_5w1s"
"""The shipped recipe both sides train (metafew/configs/omniglot_maml_5w1s.yaml)."""
IMPLEMENTATIONS = ("metafew", "learn2learn")
MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}
"""metafew.allocator.tune_allocator's mallopt settings, as glibc's environment variables."""


# ---------------------------------------------------------------------------------------------
# the learn2learn child (no metafew imports: it runs in the peers' venv)


class PeerBlock(nn.Module):
    """3x3 stride-2 conv -> BatchNorm on batch statistics (metafew's ConvBlock, model.pool=stride)."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(a, b, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(b, track_running_stats=False)


class PeerConv4(nn.Module):
    """metafew's Conv4(pool="stride", head="linear") as plain nn modules, the same parameter names:
    `layers` blocks of `hidden` filters, ReLU after each norm, a linear head on the flat features."""

    def __init__(self, channels: int, image_size: int, ways: int, hidden: int, layers: int) -> None:
        super().__init__()
        widths = [channels] + [hidden] * layers
        self.blocks = nn.ModuleList(PeerBlock(a, b) for a, b in itertools.pairwise(widths))
        side = image_size
        for _ in range(layers):
            side = (side + 1) // 2  # 3x3, stride 2, padding 1
        self.head = nn.Linear(hidden * side * side, ways)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, C, H, W] -> logits [N, ways]."""
        for block in self.blocks:
            x = F.relu(block.norm(block.conv(x)))
        return self.head(x.flatten(1))


def classes_by_index(labels: torch.Tensor, per_class: int) -> list[torch.Tensor]:
    """For each class with at least `per_class` pictures, the indices of its pictures."""
    groups = [torch.nonzero(labels == c).flatten() for c in range(int(labels.max()) + 1)]
    return [g for g in groups if len(g) >= per_class]


def sample_task(
    images: torch.Tensor, groups: list[torch.Tensor], spec: dict, g: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """A random `ways`-way `shots`-shot task from uint8 images [n, C, H, W]: support_x
    [ways*shots, C, H, W] and query_x [ways*queries, C, H, W] in [0, 1], labels by class draw."""
    ways, shots, queries = spec["ways"], spec["shots"], spec["queries"]
    support, query = [], []
    for c in torch.randperm(len(groups), generator=g)[:ways].tolist():
        picks = groups[c][torch.randperm(len(groups[c]), generator=g)[: shots + queries]]
        support.append(picks[:shots])
        query.append(picks[shots:])
    labels = torch.arange(ways)
    return (
        images[torch.cat(support)].float().div_(255.0),
        labels.repeat_interleave(shots),
        images[torch.cat(query)].float().div_(255.0),
        labels.repeat_interleave(queries),
    )


def peer_meta_step(maml: Any, opt: torch.optim.Optimizer, tasks: list, inner_steps: int) -> float:
    """One outer step as learn2learn's examples/vision/maml_omniglot.py takes it; the mean query loss."""
    opt.zero_grad()
    total = 0.0
    for sx, sy, qx, qy in tasks:
        learner = maml.clone()
        for _ in range(inner_steps):
            learner.adapt(F.cross_entropy(learner(sx), sy))
        loss = F.cross_entropy(learner(qx), qy)
        loss.backward()
        total += float(loss.detach())
    for p in maml.parameters():
        p.grad.mul_(1.0 / len(tasks))
    opt.step()
    return total / len(tasks)


def peer_train(spec: dict) -> dict:
    """Train learn2learn's MAML until spec["limit_s"] seconds in all (continuing spec["resume"]'s
    state, if any), then save the state to spec["save"]; iterations and seconds done."""
    import learn2learn as l2l

    torch.set_num_threads(spec["threads"])
    data = torch.load(spec["data"], weights_only=True)
    images, groups = data["images"], classes_by_index(data["labels"], spec["shots"] + spec["queries"])
    model = PeerConv4(spec["channels"], spec["image_size"], spec["ways"], spec["hidden"], spec["layers"])
    model.load_state_dict(torch.load(spec["init"], weights_only=True))
    maml = l2l.algorithms.MAML(model, lr=spec["inner_lr"], first_order=spec["first_order"])
    opt = torch.optim.Adam(maml.parameters(), lr=spec["outer_lr"])
    g = torch.Generator().manual_seed(spec["seed"])
    iterations, offset = 0, 0.0
    if spec["resume"]:
        state = torch.load(spec["resume"], weights_only=True)
        model.load_state_dict(state["params"])
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["generator"])
        iterations, offset = state["iterations"], state["elapsed_s"]
    started, elapsed = time.perf_counter(), offset
    while elapsed < spec["limit_s"]:
        tasks = [sample_task(images, groups, spec, g) for _ in range(spec["meta_batch_size"])]
        loss = peer_meta_step(maml, opt, tasks, spec["inner_steps"])
        iterations += 1
        elapsed = offset + time.perf_counter() - started
        if iterations % 100 == 0:
            print(f"iteration {iterations}: loss {loss:.4f}, {elapsed:.1f} s", flush=True)
    state = {
        "params": model.state_dict(),
        "optimizer": opt.state_dict(),
        "generator": g.get_state(),
        "iterations": iterations,
        "elapsed_s": elapsed,
        "learn2learn": l2l.__version__,
    }
    tmp = Path(spec["save"]).with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, spec["save"])
    return {"iterations": iterations, "elapsed_s": elapsed, "learn2learn": l2l.__version__}


# ---------------------------------------------------------------------------------------------
# pure parts of the parent


@dataclass
class Point:
    """One implementation's weights after training up to `limit_minutes`, scored."""

    implementation: str
    limit_minutes: float
    trained_minutes: float
    iterations: int
    tasks_per_s: float
    accuracy: float
    ci95: float
    weights: str


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What must be the same for points to share a results.json."""
    return {
        "recipe": RECIPE,
        "episodes": args.episodes,
        "seed": args.seed,
        "threads": args.threads,
        "scale": args.scale,
        "together": args.together,
    }


def load_results(path: Path, wanted: dict[str, Any]) -> list[Point]:
    """The points in results.json ([] where there is none); RuntimeError where it was measured
    with other settings (mixing them would compare unequal things)."""
    if not path.is_file():
        return []
    raw = json.loads(path.read_text(encoding="utf-8"))
    found = {k: raw.get("settings", {}).get(k) for k in wanted}
    if found != wanted:
        raise RuntimeError(f"{path} holds results for {found}, not {wanted}; pass another --out")
    return [Point(**p) for p in raw.get("points", [])]


def next_limits(points: list[Point], implementation: str, limits: list[float]) -> list[float]:
    """The limits still to measure for `implementation`; RuntimeError if one lies below a limit
    already measured (a run cannot be trained backwards)."""
    done = [p.limit_minutes for p in points if p.implementation == implementation]
    todo = [t for t in limits if t not in done]
    if done and todo and min(todo) < max(done):
        raise RuntimeError(
            f"{implementation}: {min(todo):g} min lies below the {max(done):g} min already trained; "
            "pass another --out for smaller limits"
        )
    return todo


def format_table(points: list[Point], info: dict[str, Any]) -> str:
    """Markdown: one row per implementation and limit, in order of the limits."""
    order = {name: k for k, name in enumerate(IMPLEMENTATIONS)}
    rows = sorted(points, key=lambda p: (p.limit_minutes, order.get(p.implementation, len(order))))
    scaled = f", limits × {info['scale']:g} (--scale)" if info.get("scale", 1) != 1 else ""
    together = " each, both sides at once (--together)" if info.get("together") else ""
    lines = [
        f"{info['recipe']} trained by each implementation for the same wall time on "
        f"{info['threads']} CPU thread(s){together}{scaled}; accuracy of the last weights at each limit on "
        f"{info['episodes']} seeded test episodes (eval.seed {info['seed']}) through metafew's "
        "evaluator, mean ± 95% CI.",
        "",
        "| implementation | minutes limit | minutes trained | iterations | tasks/s | accuracy ± 95% CI |",
        "|---|---|---|---|---|---|",
    ]
    for p in rows:
        trained = f"{p.trained_minutes:.{1 if p.trained_minutes >= 10 else 2}f}"
        lines.append(
            f"| {p.implementation} | {p.limit_minutes:g} | {trained} | {p.iterations} | "
            f"{p.tasks_per_s:.1f} | {100 * p.accuracy:.2f} ± {100 * p.ci95:.2f}% |"
        )
    return "\n".join(lines) + "\n"


def peer_spec(cfg: Config, threads: int, limit_s: float, paths: dict[str, str | None]) -> dict:
    """What the learn2learn child trains: the run's hyper-parameters; RuntimeError for a setting
    the child does not reproduce. `paths`: data, init, resume (None: from init), save."""
    a, m, t = cfg.algorithm, cfg.model, cfg.train
    plus = a.maml
    unsupported = {
        "algorithm.name": a.name != "maml",
        "model.name/pool/head": (m.name, m.pool, m.head) != ("conv4", "stride", "linear"),
        "train.optimizer/lr_schedule": (t.optimizer, t.lr_schedule) != ("adam", "constant"),
        "train.augment": t.augment,
        "algorithm.maml.*": plus.multi_step_loss or plus.learn_inner_lr or plus.per_step_bn,
        "algorithm.maml.first_order_iterations": plus.first_order_iterations > 0,
    }
    bad = [key for key, is_bad in unsupported.items() if is_bad]
    if bad:
        raise RuntimeError(f"the learn2learn child does not reproduce {bad[0]} of this config")
    return {
        "ways": cfg.task.ways,
        "shots": cfg.task.shots,
        "queries": cfg.task.queries,
        "inner_lr": a.inner_lr,
        "inner_steps": a.inner_steps,
        "first_order": a.first_order,
        "outer_lr": t.outer_lr,
        "meta_batch_size": t.meta_batch_size,
        "channels": cfg.data.channels,
        "image_size": cfg.data.image_size,
        "hidden": m.hidden,
        "layers": m.layers,
        "seed": t.seed,
        "threads": threads,
        "limit_s": limit_s,
        **paths,
    }


# ---------------------------------------------------------------------------------------------
# metafew's side of the parent: data, initial weights, scoring


def export_meta_train(data: FewShotData, path: Path) -> None:
    """The meta-train pictures as metafew samples them (rotations included) -> `path`: images
    [n, C, H, W] uint8, labels [n] int64, classes (names)."""
    train = data.meta_train
    torch.save({"images": train.images, "labels": train.labels, "classes": train.classes}, path)


def initial_weights(cfg: Config, train_classes: int) -> dict[str, torch.Tensor]:
    """The weights a run of `cfg` starts from (build_learner seeds them with train.seed)."""
    from metafew.learner import build_learner

    learner = build_learner(cfg, torch.device("cpu"), train_classes)
    return {k: v.detach().clone() for k, v in learner.params.items()}


def eval_config(run: Path, episodes: int, seed: int) -> Config:
    """The run's config with eval.episodes and eval.seed set, as `metafew eval` reads it."""
    from metafew.stages.common import run_config

    return run_config(run, [f"eval.episodes={episodes}", f"eval.seed={seed}"], ("eval", "runtime"))


@dataclass(frozen=True)
class Score:
    """Accuracy on the test episodes: mean, 95% CI half-width, and each episode's."""

    accuracy: float
    ci95: float
    per_episode: list[float]


def score(cfg: Config, params: dict[str, torch.Tensor], train_classes: int, novel: LabeledImages) -> Score:
    """THE scoring of both sides: weights `params` (metafew's parameter names) on test episodes
    0..eval.episodes-1 of stream eval.seed of the novel classes, adapted by the algorithm itself
    (eval_inner_steps, α, eval.norm) through metafew.evaluation.evaluate, as `metafew eval` does."""
    from metafew.evaluation import confidence_interval, evaluate, queries_per_class
    from metafew.learner import load_params
    from metafew.stages.common import learner_for
    from metafew.tasks import EpisodeSampler

    if cfg.eval.finetune:
        raise RuntimeError("eval.finetune=true: this benchmark scores the algorithm's own adaptation")
    queries = queries_per_class(cfg, novel)
    sampler = EpisodeSampler(novel, cfg.task.ways, cfg.task.shots, queries, cfg.eval.seed, "novel")
    learner = learner_for(cfg, train_classes)
    load_params(learner, params, "the scored weights")
    accs: np.ndarray = evaluate(
        learner, sampler, cfg.eval.episodes, cfg.algorithm.eval_inner_steps, None, cfg.eval.norm
    )
    mean, ci = confidence_interval(accs)
    return Score(mean, ci, accs.tolist())


# ---------------------------------------------------------------------------------------------
# running


def sibling(name: str) -> Any:
    """Another script of benchmarks/ as a module (benchmarks/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def metafew_run(out: Path) -> Path:
    """The metafew run folder (RuntimeError before its first stage)."""
    folders = sorted(p for p in (out / "runs" / "metafew").glob("*") if (p / "config.yaml").is_file())
    if not folders:
        raise RuntimeError("no metafew run yet: its stage comes first")
    return folders[-1]


def recipe_sets(args: argparse.Namespace) -> list[str]:
    """The --set overrides of metafew's run (and of the config the learn2learn child reads)."""
    return [f"data.root={args.omniglot}", f"runtime.threads={args.threads}", "runtime.device=cpu"]


def train_metafew(limit: float, args: argparse.Namespace) -> Path:
    """Train metafew's run to `limit` minutes (start or resume); its run folder."""
    tta = sibling("time_to_accuracy")
    return tta.train_stage(tta.Recipe("metafew", RECIPE), limit, recipe_sets(args), args.out)


def score_metafew(limit: float, args: argparse.Namespace, run: Path) -> Point:
    """Save last.pt's weights as metafew/at-<limit>min.pt and score them."""
    from metafew.checkpoints import load_meta
    from metafew.launch import load_run_data
    from metafew.runs import read_done, read_metrics

    saved, done = load_meta(run / "checkpoints" / "last.pt"), read_done(run) or {}
    if saved.iteration != done.get("iteration"):
        raise RuntimeError(f"{run}: last.pt is at iteration {saved.iteration}, done.json says {done}")
    seconds = trained_seconds(read_metrics(run), saved.iteration)
    weights = args.out / "metafew" / f"at-{limit:g}min.pt"
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params": saved.params, "iterations": saved.iteration, "elapsed_s": seconds}, weights)
    cfg = eval_config(run, args.episodes, args.seed)
    result = score(cfg, saved.params, saved.train_classes, load_run_data(cfg, run).novel)
    return point("metafew", limit, saved.iteration, seconds, cfg, result, weights)


def trained_seconds(records: list[dict[str, Any]], iteration: int) -> float:
    """elapsed_s of the training line of `iteration` in metrics.jsonl `records`: the time
    train.time_limit is checked against, without the validation and checkpoint after that step
    (done.json's elapsed_s has them; learn2learn has neither)."""
    found = [r["elapsed_s"] for r in records if r.get("iteration") == iteration and "loss" in r]
    if not found:
        raise RuntimeError(f"metrics.jsonl has no training line of iteration {iteration}")
    return float(found[-1])


def train_learn2learn(limit: float, args: argparse.Namespace, previous: Point | None) -> Path:
    """Train learn2learn's MAML to `limit` minutes in a child (continuing from `previous`'s state);
    the state it saved. Its pictures and initial weights come from the recipe's config with
    recipe_sets, as metafew's run builds them, so that the two sides can start at once."""
    from metafew.config_load import load_config
    from metafew.launch import load_run_data

    cfg = load_config(RECIPE, recipe_sets(args))
    work = args.out / "learn2learn"
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "meta_train.pt").is_file() or not (work / "init.pt").is_file():
        data = load_run_data(cfg)
        export_meta_train(data, work / "meta_train.pt")
        torch.save(initial_weights(cfg, len(data.meta_train.classes)), work / "init.pt")
    save = work / f"at-{limit:g}min.pt"
    if save.is_file():  # trained before, not yet scored
        return save
    paths = {
        "data": str(work / "meta_train.pt"),
        "init": str(work / "init.pt"),
        "resume": previous.weights if previous else None,
        "save": str(save),
    }
    spec_path = work / f"spec-{limit:g}min.json"
    spec_path.write_text(json.dumps(peer_spec(cfg, args.threads, 60 * limit, paths), indent=2))
    log = args.out / f"learn2learn.{limit:g}.train.log"
    with log.open("w", encoding="utf-8") as handle:
        code = subprocess.run(
            [args.peers_python, str(Path(__file__).resolve()), "--child", str(spec_path)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, **MALLOC),
        ).returncode
    if code != 0:
        tail = [line for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
        raise RuntimeError(
            f"learn2learn child exited {code}: {tail[-1] if tail else 'no output'} (log {log})"
        )
    return save


def score_learn2learn(limit: float, args: argparse.Namespace, save: Path) -> Point:
    """Score the weights the learn2learn child saved at `limit` minutes."""
    from metafew.launch import load_run_data

    run = metafew_run(args.out)
    cfg = eval_config(run, args.episodes, args.seed)
    data = load_run_data(cfg, run)
    state = torch.load(save, weights_only=True)
    result = score(cfg, state["params"], len(data.meta_train.classes), data.novel)
    return point("learn2learn", limit, state["iterations"], state["elapsed_s"], cfg, result, save)


def train_sides(
    names: list[str], limit: float, args: argparse.Namespace, points: list[Point]
) -> dict[str, Path]:
    """Train each implementation of `names` to `limit` minutes: one after the other, or with
    --together all at once (one child per side, each on --threads threads); what each left."""

    def train(name: str) -> Path:
        if name == "metafew":
            return train_metafew(limit, args)
        before = [q for q in points if q.implementation == name]
        return train_learn2learn(limit, args, max(before, key=lambda q: q.limit_minutes) if before else None)

    if not args.together:
        return {name: train(name) for name in names}
    with ThreadPoolExecutor(len(names)) as pool:
        futures = {name: pool.submit(train, name) for name in names}
        return {name: future.result() for name, future in futures.items()}


def point(
    name: str, limit: float, iterations: int, seconds: float, cfg: Config, result: Score, weights: Path
) -> Point:
    tasks_per_s = iterations * cfg.train.meta_batch_size / max(seconds, 1e-9)
    return Point(
        name, limit, seconds / 60, iterations, tasks_per_s, result.accuracy, result.ci95, str(weights)
    )


def peers_problem(python: str | None) -> str | None:
    """Why the peers' venv cannot run the child (None: it can)."""
    fix = (
        "install it with `bash benchmarks/install_peers.sh` and pass "
        "--peers-python /work/peers-venv/bin/python"
    )
    if not python:
        return f"no peers' venv given (--peers-python or $METAFEW_PEERS_PYTHON); {fix}"
    if not Path(python).is_file():
        return f"peers' python {python} does not exist; {fix}"
    check = subprocess.run([python, "-c", "import learn2learn"], capture_output=True, text=True)
    if check.returncode != 0:
        last = (check.stderr.strip().splitlines() or ["no output"])[-1]
        return f"learn2learn does not import in {python} ({last}); {fix}"
    return None


def save_results(points: list[Point], args: argparse.Namespace) -> None:
    """results.json and results.md from what is measured so far."""
    from metafew.files import write_json, write_text_atomic

    info = settings(args)
    write_json(args.out / "results.json", {"settings": info, "points": [asdict(p) for p in points]})
    write_text_atomic(args.out / "results.md", format_table(points, info))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    shared = Path(os.environ.get("METAFEW_SHARED_DATA", ROOT.parent / "shared" / "datasets"))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", default="15,60", help="comma-separated time limits (minutes)")
    parser.add_argument("--episodes", type=int, default=600, help="test episodes per score")
    parser.add_argument("--seed", type=int, default=1234, help="eval.seed of the test episodes")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads of each side")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every limit (0.01: a smoke run)")
    parser.add_argument("--omniglot", type=Path, default=shared / "omniglot", help="the minimal zips' folder")
    parser.add_argument(
        "--together", action="store_true", help="train both sides at once (pass --threads 1 on 2 cores)"
    )
    parser.add_argument("--peers-python", default=os.environ.get("METAFEW_PEERS_PYTHON"))
    parser.add_argument("--out", type=Path, default=Path("runs/equal-compute"))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(peer_train(json.loads(args.child.read_text(encoding="utf-8")))))
        return
    problem = peers_problem(args.peers_python)
    if problem:
        print(problem, file=sys.stderr)
        raise SystemExit(2)
    limits = sibling("time_to_accuracy").schedule(args.minutes, args.scale)
    # the parent's scoring (between the stages, when no side trains); the sides set their own
    torch.set_num_threads(args.threads * (len(IMPLEMENTATIONS) if args.together else 1))
    args.out.mkdir(parents=True, exist_ok=True)
    args.omniglot = args.omniglot.resolve()
    try:
        points = load_results(args.out / "results.json", settings(args))
        for limit in limits:
            names = [name for name in IMPLEMENTATIONS if limit in next_limits(points, name, limits)]
            if not names:
                continue
            how = "at once" if args.together else "one after the other"
            print(f"{', '.join(names)}: training to {limit:g} min {how}, then scoring", flush=True)
            trained = train_sides(names, limit, args, points)
            for name in names:
                if name == "metafew":
                    p = score_metafew(limit, args, trained[name])
                else:
                    p = score_learn2learn(limit, args, trained[name])
                points.append(p)
                save_results(points, args)
                print(f"{name} @ {limit:g} min: {100 * p.accuracy:.2f} ± {100 * p.ci95:.2f}%", flush=True)
    except RuntimeError as exc:
        print(f"equal_compute: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    save_results(points, args)
    print((args.out / "results.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
