"""The one module of helpers the tests share: the tiny experiment, pictures and class folders, the
shared datasets, the command line run in-process, and tiny float64 models with random episodes.

Every test module imports from here (`from helpers import ...`; tests/ is on sys.path through the
conftest.py beside this file); the fixtures built on these live in conftest.py.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner, Result

from metafew.algorithms.base import MetaStep
from metafew.cli import app
from metafew.functional import Params
from metafew.models import Conv4
from metafew.tasks import Episode

REPO = Path(__file__).resolve().parents[1]
"""The checkout: README.md, configs/, examples/, .ci/."""

# ---------------------------------------------------------------------------------------------
# the tiny experiment


def dotted(tree: dict, prefix: str = "") -> list[str]:
    """A nested override dict as command-line overrides: {"a": {"b": 1}} -> ["a.b=1"]."""
    out: list[str] = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += dotted(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={value}")
    return out


TINY_OVERRIDES: dict = {
    "data": {
        "image_size": 16,
        "glyphs": {
            "train_classes": 5,
            "val_classes": 3,
            "novel_classes": 3,
            "train_samples": 8,
            "novel_labeled": 6,
            "novel_unlabeled": 4,
        },
    },
    "task": {"ways": 3, "shots": 2, "queries": 3},
    "model": {"hidden": 8},
    "train": {
        "iterations": 4,
        "meta_batch_size": 2,
        "val_every": 2,
        "val_episodes": 3,
        "log_every": 1,
        "checkpoint_every": 2,
    },
    "runtime": {"device": "cpu"},
    "eval": {"episodes": 5},
    "finetune": {"members": 1},
}
"""A glyph experiment small enough for unit tests (3-way 2-shot on 16x16 images, 8 filters; one
fine-tuned model, not the default seed ensemble: the ensemble's own tests set finetune.members)."""

TINY_ARGS: list[str] = dotted(TINY_OVERRIDES)
"""The same tiny experiment as command-line overrides (add train.runs_dir=...)."""


def tiny(runs_dir: Path, *extra: str) -> list[str]:
    """The tiny experiment's overrides with its runs under `runs_dir`."""
    return [*TINY_ARGS, f"train.runs_dir={runs_dir}", *extra]


# ---------------------------------------------------------------------------------------------
# pictures, class folders and the shared datasets


def write_image(path: Path, size: int = 20, seed: int = 0, mode: str = "L") -> Path:
    """A random picture at `path` (parents created)."""
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
    return path


def make_class_folder(root: Path, classes: dict[str, int], size: int = 20, suffix: str = ".png") -> Path:
    """root/<class>/<i>.png with the given number of random pictures per class."""
    for k, (name, count) in enumerate(classes.items()):
        for i in range(count):
            write_image(root / name / f"{i:03d}{suffix}", size, seed=1000 * k + i)
    return root


def shared_datasets() -> Path:
    """../shared/datasets beside the checkout, or $METAFEW_SHARED_DATA."""
    default = REPO.parent / "shared" / "datasets"
    return Path(os.environ.get("METAFEW_SHARED_DATA", default))


OMNIGLOT_MINIMAL = {"small1": "images_background_small1.zip", "small2": "images_background_small2.zip"}
"""The two minimal Omniglot zips in the shared datasets, by part name."""


def count_builds(monkeypatch: pytest.MonkeyPatch, name: str) -> list[str]:
    """Replace DATASETS[name].build with a wrapper that records each call (the decoding)."""
    from metafew.data import DATASETS  # the registry as the tests see it

    entry = DATASETS[name]
    calls: list[str] = []
    build = entry.build

    def counting(cfg: Any, sources: list[Path], recorded: dict | None) -> Any:
        calls.append(name)
        return build(cfg, sources, recorded)

    monkeypatch.setitem(DATASETS, name, dataclasses.replace(entry, build=counting))
    return calls


# ---------------------------------------------------------------------------------------------
# the command line, in-process, and what it leaves in a run folder

SIGNALS = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name)]

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
"""`torchrun --standalone --nproc-per-node 2` (a free port; gloo on CPU): add `-m metafew ARGS`."""


@contextmanager
def _in_process() -> Iterator[None]:
    """Run a command on one torch thread (the CPUs are shared), and give pytest its own signal
    handlers back afterwards (`train` installs SIGINT/SIGTERM/SIGUSR1 handlers)."""
    saved = {s: signal.getsignal(s) for s in SIGNALS}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def invoke(*args: object, env: dict[str, str] | None = None) -> Result:
    """Run `metafew ARGS...` in-process; a crash (not a user error) fails the test at once."""
    with _in_process():
        result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"metafew {args} crashed:\n{result.output}") from result.exception
    return result


def ok(*args: object, env: dict[str, str] | None = None) -> Result:
    """Run a command that must succeed."""
    result = invoke(*args, env=env)
    assert result.exit_code == 0, f"metafew {args} -> {result.exit_code}\n{result.output}"
    return result


def signal_after(monkeypatch: pytest.MonkeyPatch, sig: int, iteration: int) -> None:
    """Deliver `sig` to this process right after the metrics line of `iteration` is written."""
    from metafew import engine

    real = engine.append_metrics

    def append(run: Path, record: dict[str, Any]) -> None:
        real(run, record)
        if record.get("iteration") == iteration and "loss" in record:
            os.kill(os.getpid(), sig)

    monkeypatch.setattr(engine, "append_metrics", append)


def tiny_finetuned(root: Path, *overrides: str) -> Path:
    """A tiny run under root/runs (2 iterations), fine-tuned for 2 steps (plus `overrides`): its
    model folder."""
    ok("train", *tiny(root / "runs", "train.iterations=2", "runtime.threads=1"))
    run = only_child(root / "runs")
    ok("finetune", run, "finetune.steps=2", "runtime.threads=1", *overrides)
    return only_child(run / "finetune")


def assert_user_error(result: Result, code: int, *words: str) -> str:
    """Exit `code`, exactly one line on stderr naming every word, no traceback."""
    assert result.exit_code == code, f"expected exit {code}, got {result.exit_code}:\n{result.output}"
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


def only_child(folder: Path) -> Path:
    """The single entry of `folder`."""
    children = list(folder.iterdir())
    assert len(children) == 1, children
    return children[0]


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def load_pt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------
# tiny float64 models and random episodes: hand-written references need exact arithmetic, not
# realistic data (the algorithm tests and the fused path's)

WAYS, SHOTS, QUERIES, SIZE = 3, 2, 2, 8


def tiny_model(head: str = "linear", pool: str = "max") -> Conv4:
    """A seeded 2-block Conv-4 with 4 filters on 8x8 pictures, in float64."""
    torch.manual_seed(0)
    return Conv4(in_channels=1, image_size=SIZE, ways=WAYS, hidden=4, layers=2, head=head, pool=pool).double()


def random_episodes(
    count: int, seed: int = 1, interleave_support: bool = False, classes: int | None = None
) -> list[Episode]:
    """`count` episodes of uniform noise pictures; support labels grouped by class (0,0,1,1,..)
    or, with `interleave_support`, interleaved (0,1,2,0,1,2) so no code may assume the order.
    Episode i's dataset classes are 0..WAYS-1, or WAYS random ones of `classes` if given."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        sx = torch.rand(WAYS * SHOTS, 1, SIZE, SIZE, generator=g, dtype=torch.float64)
        qx = torch.rand(WAYS * QUERIES, 1, SIZE, SIZE, generator=g, dtype=torch.float64)
        labels = torch.arange(WAYS)
        sy = labels.repeat(SHOTS) if interleave_support else labels.repeat_interleave(SHOTS)
        qy = labels.repeat_interleave(QUERIES)
        drawn = labels if classes is None else torch.randperm(classes, generator=g)[:WAYS]
        out.append(Episode(sx, sy, qx, qy, drawn))
    return out


def assert_gradient_of_hand_written_loss(step: MetaStep, params: Params, loss: torch.Tensor) -> None:
    """`step`, the meta-gradients of `params` on 3 tasks, holds autograd's gradient of the
    hand-written `loss` for every tensor but the model's own head, whose gradient is zero (the
    algorithm brings its own head); its mean task loss is `loss`."""
    trained = [k for k in params if not k.startswith("head.")]
    expected = dict(zip(trained, torch.autograd.grad(loss, [params[k] for k in trained])))
    for k in trained:
        torch.testing.assert_close(step.grads[k], expected[k], rtol=1e-9, atol=1e-11)
    assert torch.equal(step.grads["head.weight"], torch.zeros_like(params["head.weight"]))
    assert float(step.losses.mean()) == pytest.approx(float(loss.detach()), rel=1e-12)
    assert step.losses.shape == step.accuracies.shape == (3,)


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/<name>.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building the class
    spec.loader.exec_module(module)
    return module
