"""The learner the loops work on: the model as a pure function, every meta-learned tensor, the
algorithm, the device and the memory budget's chunk sizes, built once per command."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from metafew.algorithms import Algorithm, BatchedEvaluator, build_algorithm
from metafew.budget import Chunks, eval_chunk_size, train_chunk_size
from metafew.config import Config
from metafew.errors import RunError
from metafew.functional import Forward, Params
from metafew.models import NormStats, build_model, make_forward


@dataclass
class Learner:
    """A model as a pure function, its parameters and the algorithm that adapts it."""

    forward: Forward
    params: Params
    algorithm: Algorithm
    device: torch.device
    train_classes: int
    chunks: Chunks
    """Tasks per training call and test episodes per evaluation call (metafew.budget)."""

    @property
    def batched_eval(self) -> BatchedEvaluator | None:
        """The algorithm's task-batched evaluation, where it has one for this model."""
        if self.forward.tasks is None or not isinstance(self.algorithm, BatchedEvaluator):
            return None
        return self.algorithm


def build_learner(
    cfg: Config, device: torch.device, train_classes: int, episodes: Config | None = None
) -> Learner:
    """Model (seeded init), algorithm, and every meta-learned tensor: the model's parameters plus
    the algorithm's own `algo.*` ones. `train_classes`: number of meta-train classes. The chunk
    sizes are decided here, once (metafew.budget). `episodes`: the config whose task.* the
    algorithm's episodes have where it differs from training's (eval.ways, eval.shots:
    config_load.episode_setting); the model's head keeps cfg.task.ways, so checkpoints still load."""
    episodes = cfg if episodes is None else episodes
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, cfg.data.channels, cfg.data.image_size, cfg.task.ways).to(device)
    forward = make_forward(model)
    # the gradients are the same whatever the chunk: each chunk adds sum(its losses) / tasks
    train_chunk = train_chunk_size(cfg, model)
    algorithm = build_algorithm(episodes, forward, train_classes, train_chunk)
    batched = forward.tasks is not None and isinstance(algorithm, BatchedEvaluator)
    chunks = Chunks(
        train_chunk, eval_chunk_size(episodes, model, batched), eval_chunk_size(episodes, model, False)
    )
    params: Params = dict(model.named_parameters())
    extra = algorithm.init_meta_params(params)
    params |= {k: nn.Parameter(v.detach().clone()) for k, v in extra.items()}
    return Learner(forward, params, algorithm, device, train_classes, chunks)


def load_params(learner: Learner, saved: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy saved tensors into the learner's parameters (names and shapes must match)."""
    mismatch = [k for k, p in learner.params.items() if k not in saved or saved[k].shape != p.shape]
    mismatch += [k for k in saved if k not in learner.params]
    if mismatch:
        raise RunError(
            f"{source} does not fit the model in its config (parameter {mismatch[0]!r}); "
            "was the file copied from another run?"
        )
    with torch.no_grad():
        for key, param in learner.params.items():
            param.copy_(saved[key])


def norm_stats(learner: Learner, params: Params, x: torch.Tensor) -> NormStats:
    """The BatchNorm statistics the model computes on x [N, C, H, W] with `params`."""
    return learner.forward(params, x, None, True)[1]
