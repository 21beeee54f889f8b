"""Issue 5: MAML's Omniglot workload, metafew against learn2learn and higher.

    python benchmarks/maml_speed.py [--peers-python /work/peers-venv/bin/python] [--repeats 3]
        [--steps 3] [--queries 1 15] [--sections second first eval sampling]

Workload (Finn et al. 2017, Omniglot): Conv-4 of 4 x [3x3 conv 64, stride 2, BatchNorm on batch
statistics, ReLU] and a linear head, 28x28 grey pictures, 5-way 1-shot, meta-batch 32, one inner
SGD step of α = 0.4, an Adam outer step (β = 1e-3); 1 and 15 queries per class. Pixels are seeded
uniform noise: speed does not depend on them, and every implementation gets the same tensors.

Each measurement is a fresh subprocess (`--child`), so that its peak resident memory (VmHWM
from /proc/self/status) is its own; implementations alternate round-robin `--repeats` times and
the table shows medians. Every implementation runs with metafew's glibc malloc tuning (peers
through MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1e11). metafew runs its real code path (a
learner built from a Config as the engine builds it, then the engine's optimizer step);
learn2learn (clone/adapt loop) and higher (innerloop_ctx) run in the peers' venv
(`--peers-python` or $METAFEW_PEERS_PYTHON; install with `bash benchmarks/install_peers.sh`) on
an nn.Module with the same parameter names, started from the same initial weights.
`metafew` is the default config (batching auto, runtime.max_memory 256 MB per call, which splits
the meta-batch into calls of as many tasks as fit); `metafew no limit` sets runtime.max_memory=0.
Each child also writes its float32 meta-gradient of one fixed meta-batch; the parent compares
it with a float64 reference (a per-task autograd loop).

Sections: `second` (second-order MAML), `first` (first-order MAML and Reptile against learn2learn
first order), `eval` (600 test episodes, 10 inner steps, no second-order graph) and `sampling`
(Omniglot episodes sampled per second against training tasks per second).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WAYS, SHOTS, SIZE, META_BATCH, ALPHA, BETA, HIDDEN = 5, 1, 28, 32, 0.4, 1e-3, 64
EVAL_STEPS = 10
DEVICE = os.environ.get("METAFEW_BENCH_DEVICE", "cpu")
"""Where metafew's children run (`--device`; peers always run on the CPU)."""
ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# shared by every child (no metafew imports: peers run in their own venv)


class PeerBlock(nn.Module):
    """3x3 stride-2 conv -> BatchNorm on batch statistics (as metafew's ConvBlock)."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(a, b, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(b, track_running_stats=False)


class PeerConv4(nn.Module):
    """The benchmark's network as plain nn modules, parameter names as in metafew's Conv4."""

    def __init__(self) -> None:
        super().__init__()
        channels = [1] + [HIDDEN] * 4
        self.blocks = nn.ModuleList(PeerBlock(a, b) for a, b in itertools.pairwise(channels))
        self.head = nn.Linear(HIDDEN * 2 * 2, WAYS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = F.relu(block.norm(block.conv(x)))
        return self.head(x.flatten(1))


def meta_batch(index: int, queries: int, tasks: int = META_BATCH) -> list[tuple[torch.Tensor, ...]]:
    """Meta-batch `index`: `tasks` (support_x, support_y, query_x, query_y), seeded noise."""
    g = torch.Generator().manual_seed(1000 + index)
    labels = torch.arange(WAYS)
    out = []
    for _ in range(tasks):
        sx = torch.rand(WAYS * SHOTS, 1, SIZE, SIZE, generator=g)
        qx = torch.rand(WAYS * queries, 1, SIZE, SIZE, generator=g)
        out.append((sx, labels.repeat_interleave(SHOTS), qx, labels.repeat_interleave(queries)))
    return out


def peer_step(impl: str, model: nn.Module, maml: nn.Module | None, batch: list, first_order: bool) -> None:
    """Accumulate the mean query loss's meta-gradient of `batch` into model's .grad (`maml`:
    learn2learn's wrapper of `model`, for impl learn2learn)."""
    if maml is not None:
        for sx, sy, qx, qy in batch:
            learner = maml.clone()
            learner.adapt(F.cross_entropy(learner(sx), sy))
            (F.cross_entropy(learner(qx), qy) / len(batch)).backward()
        return
    import higher

    inner = torch.optim.SGD(model.parameters(), lr=ALPHA)
    for sx, sy, qx, qy in batch:
        with higher.innerloop_ctx(
            model, inner, copy_initial_weights=False, track_higher_grads=not first_order
        ) as (
            fmodel,
            diffopt,
        ):
            diffopt.step(F.cross_entropy(fmodel(sx), sy))
            (F.cross_entropy(fmodel(qx), qy) / len(batch)).backward()


def peer_evaluate(model: nn.Module, episodes: int, queries: int) -> None:
    """learn2learn's test-time loop: clone, EVAL_STEPS first-order adapt steps, classify."""
    import learn2learn as l2l

    maml = l2l.algorithms.MAML(model, lr=ALPHA, first_order=True)
    for i in range(episodes):
        sx, sy, qx, qy = meta_batch(10_000 + i, queries, tasks=1)[0]
        learner = maml.clone()
        for _ in range(EVAL_STEPS):
            learner.adapt(F.cross_entropy(learner(sx), sy))
        with torch.no_grad():
            (learner(qx).argmax(-1) == qy).float().mean()


def peer_runner(impl: str, first_order: bool, init: dict):
    model = PeerConv4()
    model.load_state_dict(init)
    opt = torch.optim.Adam(model.parameters(), lr=BETA)
    maml = None
    if impl == "learn2learn":
        import learn2learn as l2l

        maml = l2l.algorithms.MAML(model, lr=ALPHA, first_order=first_order)

    def gradients(batch: list) -> dict:
        model.zero_grad()
        peer_step(impl, model, maml, batch, first_order)
        return {k: p.grad.clone() for k, p in model.named_parameters()}

    def step(batch: list) -> None:
        opt.zero_grad()
        peer_step(impl, model, maml, batch, first_order)
        opt.step()

    return gradients, step, model


# ---------------------------------------------------------------------------------------------
# metafew children


def metafew_config(
    algorithm: str, queries: int, batching: str, first_order: bool = False, max_memory: int | None = None
):
    """The workload as a metafew Config (configs/omniglot_5w1s.yaml's settings, meta-batch 32)."""
    from metafew.config import Config

    cfg = Config()
    cfg.model.pool = "stride"
    cfg.task.ways, cfg.task.shots, cfg.task.queries = WAYS, SHOTS, queries
    cfg.algorithm.name, cfg.algorithm.inner_lr, cfg.algorithm.inner_steps = algorithm, ALPHA, 1
    cfg.algorithm.first_order = first_order
    cfg.algorithm.eval_inner_steps = EVAL_STEPS
    cfg.runtime.batching, cfg.train.meta_batch_size, cfg.train.outer_lr = batching, META_BATCH, BETA
    cfg.runtime.device = DEVICE
    if max_memory is not None:  # else the default runtime.max_memory
        cfg.runtime.max_memory = max_memory
    if algorithm == "reptile":  # one SGD step on the support set, plain SGD on θ − mean φ
        cfg.algorithm.reptile.inner_optimizer, cfg.algorithm.reptile.use_query = "sgd", False
        cfg.algorithm.reptile.inner_batch_size = 0
        cfg.train.optimizer, cfg.train.outer_lr = "sgd", 1.0
    return cfg


def metafew_runner(
    algorithm: str, batching: str, first_order: bool, queries: int, init: dict, max_memory: int | None = None
):
    from metafew.allocator import tune_allocator
    from metafew.engine import build_optimizer
    from metafew.learner import build_learner
    from metafew.tasks import Episode

    tune_allocator()
    cfg = metafew_config(algorithm, queries, batching, first_order, max_memory)
    learner = build_learner(cfg, torch.device(cfg.runtime.device), 100)
    with torch.no_grad():
        for k, p in learner.params.items():
            p.copy_(init[k])
    opt = build_optimizer(cfg, learner.params)

    def episodes(batch: list) -> list:
        return [Episode(sx, sy, qx, qy, torch.arange(WAYS)).to(learner.device) for sx, sy, qx, qy in batch]

    def gradients(batch: list) -> dict:
        return {
            k: g.cpu()
            for k, g in learner.algorithm.meta_gradients(learner.params, episodes(batch), 0).grads.items()
        }

    def step(batch: list) -> None:
        grads = learner.algorithm.meta_gradients(learner.params, episodes(batch), 0).grads
        for k, p in learner.params.items():
            p.grad = grads[k]
        opt.step()

    return gradients, step, learner


def metafew_evaluate(learner, episodes: int, queries: int) -> None:
    """evaluate on the benchmark's episodes, eval.chunk_size's default of 4 per call."""
    from metafew.evaluation import evaluate

    class Sampler:  # the benchmark's seeded noise episodes in EpisodeSampler's interface
        def episode(self, i: int):
            from metafew.tasks import Episode

            sx, sy, qx, qy = meta_batch(10_000 + i, queries, tasks=1)[0]
            return Episode(sx, sy, qx, qy, torch.arange(WAYS))

    evaluate(learner, Sampler(), episodes, EVAL_STEPS, None, "transductive")  # type: ignore[arg-type]


IMPLS = {
    # name: (runs in, algorithm, batching, first order)
    "metafew": ("metafew", "maml", "auto", False),
    "metafew no limit": ("metafew", "maml", "auto", False),  # runtime.max_memory=0
    "metafew vmap": ("metafew", "maml", "vmap", False),
    "metafew loop": ("metafew", "maml", "loop", False),
    "learn2learn": ("peer", "learn2learn", "", False),
    "higher": ("peer", "higher", "", False),
    "metafew FO": ("metafew", "maml", "auto", True),
    "metafew Reptile": ("metafew", "reptile", "vmap", False),
    "learn2learn FO": ("peer", "learn2learn", "", True),
    "metafew eval": ("metafew", "maml", "auto", False),
    "learn2learn eval": ("peer", "learn2learn", "", True),
}
SECTIONS = {
    "second": ["metafew", "metafew no limit", "metafew vmap", "learn2learn", "higher"],
    "first": ["metafew FO", "metafew Reptile", "learn2learn FO"],
    "eval": ["metafew eval", "learn2learn eval"],
    "device": ["metafew", "metafew vmap", "metafew loop"],  # for --device cuda: no peers
}


def child(impl: str, queries: int, steps: int, workdir: Path) -> dict:
    """Time `steps` meta-steps (or evaluation episodes) of `impl`; write its meta-gradient."""
    where, algorithm, batching, first_order = IMPLS[impl]
    init = torch.load(workdir / "init.pt", weights_only=True)
    if where == "metafew":
        budget = 0 if impl.endswith("no limit") else None  # runtime.max_memory: 0 or the default
        gradients, step, model = metafew_runner(algorithm, batching, first_order, queries, init, budget)
    else:
        gradients, step, model = peer_runner(algorithm, first_order, init)
    if impl.endswith("eval"):
        run = metafew_evaluate if where == "metafew" else peer_evaluate
        run(model, 4, queries)  # warm-up
        start = time.perf_counter()
        run(model, steps, queries)
        return {"per_s": steps / (time.perf_counter() - start)}
    torch.save(gradients(meta_batch(0, queries)), workdir / f"grads-{impl}-{queries}.pt")
    step(meta_batch(1, queries))  # warm-up
    cuda = DEVICE.startswith("cuda") and where == "metafew"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(steps):
        step(meta_batch(2 + i, queries))
    if cuda:
        torch.cuda.synchronize()
        return {
            "per_s": steps * META_BATCH / (time.perf_counter() - start),
            "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20,
            "gpu": torch.cuda.get_device_name(),
        }
    return {"per_s": steps * META_BATCH / (time.perf_counter() - start)}


# ---------------------------------------------------------------------------------------------
# the parent: machine bounds, references, interleaved runs, the table


def gemm_peak(device: str = "cpu", seconds: float = 3.0, n: int = 2048) -> tuple[float, float]:
    """(95th percentile, median) fp32 GEMM GFLOP/s of n x n matrices over ~`seconds`."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    rates: list[float] = []
    torch.mm(a, b)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        torch.mm(a, b)
        sync()
        rates.append(2 * n**3 / (time.perf_counter() - start) / 1e9)
    rates.sort()
    return rates[int(0.95 * (len(rates) - 1))], statistics.median(rates)


def conv_flops_per_task(queries: int, first_order: bool) -> float:
    """Convolution FLOPs (forward, backward and double backward) of one task's meta-gradient,
    counted by torch's FlopCounterMode on metafew's per-task loop."""
    from torch.utils.flop_counter import FlopCounterMode

    from metafew.learner import build_learner
    from metafew.tasks import Episode

    cfg = metafew_config("maml", queries, "loop", first_order)
    learner = build_learner(cfg, torch.device("cpu"), 100)
    sx, sy, qx, qy = meta_batch(0, queries, tasks=1)[0]
    counter = FlopCounterMode(display=False)
    with counter:
        learner.algorithm.meta_gradients(learner.params, [Episode(sx, sy, qx, qy, torch.arange(WAYS))], 0)
    ops = counter.get_flop_counts()["Global"]
    return float(sum(v for k, v in ops.items() if "convolution" in str(k)))


def reference_gradients(init: dict, queries: int, first_order: bool) -> dict:
    """The meta-gradient of meta-batch 0 in float64: a per-task autograd loop on PeerConv4 (not
    vmapped, where torch's batch_norm is exact)."""
    from torch.func import functional_call

    model = PeerConv4().double()
    theta = {k: v.double().requires_grad_() for k, v in init.items()}
    total = torch.zeros((), dtype=torch.float64)
    for sx, sy, qx, qy in meta_batch(0, queries):
        loss = F.cross_entropy(functional_call(model, theta, (sx.double(),)), sy)
        grads = torch.autograd.grad(loss, list(theta.values()), create_graph=not first_order)
        fast = {k: v - ALPHA * g for (k, v), g in zip(theta.items(), grads)}
        total = total + F.cross_entropy(functional_call(model, fast, (qx.double(),)), qy) / META_BATCH
    return dict(zip(theta, torch.autograd.grad(total, list(theta.values()))))


def own_peak_mb() -> float:
    """This process's peak resident memory in MB: VmHWM, which exec resets (ru_maxrss of a child
    keeps the parent's peak from before the exec, so wait4's figure only serves as a fallback)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_child_measured(python: str, impl: str, queries: int, steps: int, workdir: Path) -> dict:
    """One child run: its result and its own peak RSS in MB."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if IMPLS[impl][0] == "peer":  # the malloc tuning metafew applies to itself (tune_allocator)
        env |= {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
    cmd = [python, __file__, "--child", impl, str(queries), str(steps), str(workdir)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        out.seek(0), err.seek(0)
        if os.waitstatus_to_exitcode(status):
            raise RuntimeError(f"{impl} failed:\n{err.read()[-3000:]}")
        result = json.loads(out.read().strip().splitlines()[-1])
    result["peak_mb"] = result["peak_mb"] or usage.ru_maxrss / 1024
    return result


def peers_available(python: str | None) -> dict[str, bool]:
    """Which peers import in `python` (None: no peers' venv given)."""
    found = {}
    for name in ("learn2learn", "higher"):
        ok = (
            python is not None
            and subprocess.run([python, "-c", f"import {name}"], capture_output=True).returncode == 0
        )
        found[name] = ok
    return found


def sampling_rate(queries: int, seconds: float = 5.0) -> float | None:
    """Omniglot episodes sampled per second by metafew's sampler (None: no Omniglot zips)."""
    from metafew.data import load_data
    from metafew.engine import training_samplers

    root = Path(os.environ.get("METAFEW_SHARED_DATA", ROOT.parent / "shared" / "datasets")) / "omniglot"
    if not root.is_dir():
        return None
    cfg = metafew_config("maml", queries, "auto")
    cfg.data.dataset, cfg.data.root = "omniglot", str(root)
    cfg.data.omniglot.split = "alphabets"  # the minimal background zips, as configs/omniglot_5w1s.yaml
    sampler = training_samplers(cfg, load_data(cfg.data))[0]
    count, start, it = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        count += len(sampler.batch(it, META_BATCH))
        it += 1
    return count / (time.perf_counter() - start)


def print_table(title: str, rows: dict[str, list[dict]], base: str | None, unit: str, extra) -> None:
    print(f"\n{title}")
    print(f"{'implementation':<18} {unit:>9} {'x ' + (base or '-'):>15} {'peak MB':>8}  notes")
    base_rate = statistics.median(r["per_s"] for r in rows[base]) if base in rows else None
    for name, results in rows.items():
        rate = statistics.median(r["per_s"] for r in results)
        ratio = f"{rate / base_rate:.2f}x" if base_rate else "-"
        peak = statistics.median(r["peak_mb"] for r in results)
        gpu = [r for r in results if "gpu" in r]
        if gpu:
            peak = statistics.median(r["gpu_peak_mb"] for r in gpu)  # CUDA: torch's peak allocation
        print(f"{name:<18} {rate:9.1f} {ratio:>15} {peak:8.0f}  {extra(name, rate)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peers-python", default=os.environ.get("METAFEW_PEERS_PYTHON"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed meta-steps per child")
    parser.add_argument("--queries", type=int, nargs="+", default=[1, 15])
    parser.add_argument("--eval-episodes", type=int, default=600)
    parser.add_argument("--sections", nargs="+", default=["second", "first", "eval", "sampling"])
    parser.add_argument("--device", default="cpu", help="where metafew runs (cuda: use --sections device)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ["METAFEW_BENCH_DEVICE"] = args.device  # children inherit it
    if args.child:
        impl, queries, steps, workdir = args.child
        result = child(impl, int(queries), int(steps), Path(workdir))
        print(json.dumps(result | {"peak_mb": own_peak_mb()}))
        return

    from metafew.learner import build_learner

    peers = peers_available(args.peers_python)
    for name, ok in peers.items():
        if not ok:
            print(
                f"{name}: not importable; install the peers with `bash benchmarks/install_peers.sh` and "
                "pass --peers-python /work/peers-venv/bin/python (or set METAFEW_PEERS_PYTHON)"
            )
    peak, median = gemm_peak(args.device)
    cuda = args.device.startswith("cuda")
    where = torch.cuda.get_device_name() if cuda else f"{torch.get_num_threads()} CPU threads"
    print(
        f"fp32 GEMM (2048^3) on {where}: p95 {peak:.0f} GFLOP/s, median {median:.0f}; "
        f"torch {torch.__version__}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        learner = build_learner(metafew_config("maml", 1, "auto"), torch.device("cpu"), 100)
        init = {k: v.detach().clone() for k, v in learner.params.items()}
        torch.save(init, workdir / "init.pt")
        print(f"parameters: {sum(v.numel() for v in init.values()):,}")
        for section in args.sections:
            if section == "sampling":
                continue
            impls = [i for i in SECTIONS[section] if IMPLS[i][0] == "metafew" or peers.get(IMPLS[i][1])]
            for queries in args.queries if section != "eval" else [15]:
                run_section(args, section, impls, queries, workdir, peak)
    if "sampling" in args.sections:
        for queries in args.queries:
            rate = sampling_rate(queries)
            print(
                f"\nsampling, {queries} queries/class: "
                + (
                    "no Omniglot zips under $METAFEW_SHARED_DATA/omniglot"
                    if rate is None
                    else f"{rate:.0f} Omniglot episodes/s from metafew's sampler (one process, one thread)"
                )
            )


def run_section(args, section: str, impls: list[str], queries: int, workdir: Path, peak: float) -> None:
    steps = args.eval_episodes if section == "eval" else args.steps
    rows: dict[str, list[dict]] = {i: [] for i in impls}
    for _ in range(args.repeats):
        for impl in impls:
            python = sys.executable if IMPLS[impl][0] == "metafew" else args.peers_python
            rows[impl].append(run_child_measured(python, impl, queries, steps, workdir))
    if section == "eval":
        base = "learn2learn eval"
        print_table(
            f"evaluation: {steps} episodes of 5-way 1-shot, {queries} queries/class, "
            f"{EVAL_STEPS} inner steps, {args.repeats} repeats",
            rows,
            base,
            "episodes/s",
            lambda name, rate: "",
        )
        return
    first_order = section == "first"
    flops = conv_flops_per_task(queries, first_order)
    reference = reference_gradients(torch.load(workdir / "init.pt"), queries, first_order)

    def notes(name: str, rate: float) -> str:
        if "Reptile" in name:  # a pseudo-gradient θ − mean φ, not the meta-loss's gradient
            return "pseudo-gradient (no reference)"
        grads = torch.load(workdir / f"grads-{name}-{queries}.pt")
        delta = max(float((grads[k].double() - reference[k]).abs().max()) for k in reference)
        scale = max(float(v.abs().max()) for v in reference.values())
        return f"GEMM {rate * flops / 1e9 / peak:5.1%}, max|Δg| {delta:.1e} (max|g| {scale:.1e})"

    base = {"first": "learn2learn FO", "device": "metafew loop"}.get(section, "learn2learn")
    print_table(
        f"{'first' if first_order else 'second'}-order, 5-way 1-shot, {queries} queries/class, "
        f"meta-batch {META_BATCH}, {args.repeats} repeats; {flops * META_BATCH / 1e9:.1f} GFLOP of "
        "convolutions per meta-step",
        rows,
        base,
        "tasks/s",
        notes,
    )


if __name__ == "__main__":
    main()
