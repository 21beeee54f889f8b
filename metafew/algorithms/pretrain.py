"""Pre-train + fine-tune baselines — Chen, Liu, Kira, Wang & Huang, "A Closer Look at Few-shot
Classification", ICLR 2019 (arXiv:1904.04232): Baseline, and Baseline++ with `model.head: cosine`.

Meta-training is plain classification over all C meta-train classes at once. The body f_θ (the
backbone without its head) feeds a global head h_W owned by the algorithm (`algo.head.weight`
[C, F], `algo.head.bias` [C] for the linear head); every picture x of the meta-batch's episodes
(support and query) carries its global label y = episode.classes[label]:
    (θ, W) ← (θ, W) − β ∇_{θ,W} mean_x CE(h_W(f_θ(x)), y)            (β: the engine's optimizer)
    Baseline:   h_W(f) = W f + b
    Baseline++: h_W(f) = s · cos(f, w_k)   (s = `model.cosine_scale`)
The pictures of a meta-batch form one classification batch (one set of BatchNorm statistics;
`runtime.batching` does not apply).

Fine-tuning (adapt, validation, eval, finetune) freezes the body and fits a fresh N-way head —
the model's own `head.*` tensors — on the support features, computed once with the support set's
BatchNorm statistics: `steps` full-batch SGD steps of step size `lr` (default `inner_lr`) on
the cross-entropy, from zeros (linear) or the class means of the normalised features (cosine;
weight imprinting, Qi, Brown & Lowe, CVPR 2018). The paper fits with mini-batches of 4 and
momentum for 100 epochs; full-batch SGD keeps adaptation a short pure function that vmaps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import grad

from metafew.algorithms.base import MetaStep
from metafew.functional import Forward, Params, model_params, sgd_step
from metafew.tasks import Episode

GLOBAL_HEAD = "algo.head."
"""Key prefix of the global pre-training head."""


def head_logits(head: Params, features: torch.Tensor, cosine_scale: float | None) -> torch.Tensor:
    """Logits [N, K] of a head {"weight" [K, F](, "bias" [K])} on features [N, F]: linear, or
    s·cos when `cosine_scale` is s (exactly what `models.CosineHead` computes)."""
    if cosine_scale is not None:
        return cosine_scale * F.normalize(features, dim=-1) @ F.normalize(head["weight"], dim=-1).T
    return features @ head["weight"].T + head["bias"]


def init_head(features: torch.Tensor, labels: torch.Tensor, ways: int, cosine: bool) -> Params:
    """The fresh head fine-tuning starts from: zeros (linear), or for the cosine head each class's
    mean normalised feature (imprinting). features [S, F], labels [S] -> {"weight" [ways, F], ...}."""
    if not cosine:
        return {
            "weight": features.new_zeros(ways, features.shape[-1]),
            "bias": features.new_zeros(ways),
        }
    onehot = (labels[:, None] == torch.arange(ways, device=labels.device)).to(features.dtype)
    return {"weight": onehot.T @ F.normalize(features, dim=-1) / onehot.sum(0).clamp(min=1)[:, None]}


def fit_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    ways: int,
    steps: int,
    lr: float,
    cosine_scale: float | None = None,
) -> Params:
    """A `ways`-way head fitted by `steps` full-batch SGD steps of `lr` on the cross-entropy of
    fixed features [S, F] with labels [S]."""
    head = init_head(features, labels, ways, cosine_scale is not None)

    def loss(h: Params) -> torch.Tensor:
        return F.cross_entropy(head_logits(h, features, cosine_scale), labels)

    for _ in range(steps):
        head = sgd_step(head, grad(loss)(head), lr)
    return head


def global_batch(episodes: list[Episode]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every picture of `episodes` with its meta-train class index: (x [T·n, C, H, W], y [T·n])."""
    xs, ys = [], []
    for ep in episodes:
        xs.append(torch.cat([ep.support_x, ep.query_x]))
        local = torch.cat([ep.support_y, ep.query_y])
        ys.append(ep.classes.to(local.device)[local])
    return torch.cat(xs), torch.cat(ys)


class Pretrain:
    """Baseline / Baseline++ on a pure `forward(params, x, embed=True)`; see the module docstring."""

    def __init__(
        self,
        forward: Forward,
        train_classes: int,
        ways: int,
        inner_lr: float,
        cosine_scale: float | None = None,
        seed: int = 0,
    ):
        self.forward, self.train_classes, self.ways = forward, train_classes, ways
        self.inner_lr, self.cosine_scale, self.seed = inner_lr, cosine_scale, seed

    def init_meta_params(self, params: Params) -> Params:
        """The global head, seeded by `seed`: weight [train_classes, F] (and bias [train_classes])
        drawn as the model's own head of that kind draws them."""
        ref = params["head.weight"]
        features = ref.shape[1]
        g = torch.Generator().manual_seed(self.seed)
        shape = (self.train_classes, features)
        if self.cosine_scale is not None:  # as models.CosineHead
            return {f"{GLOBAL_HEAD}weight": (torch.randn(shape, generator=g) / features**0.5).to(ref)}
        bound = 1 / features**0.5  # U(−1/√F, 1/√F), as nn.Linear's default initialisation
        weight = (2 * torch.rand(shape, generator=g) - 1) * bound
        bias = (2 * torch.rand(self.train_classes, generator=g) - 1) * bound
        return {f"{GLOBAL_HEAD}weight": weight.to(ref), f"{GLOBAL_HEAD}bias": bias.to(ref)}

    def global_loss(
        self, params: Params, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-picture cross-entropy [N], logits [N, train_classes]) of the global classifier on
        x [N, C, H, W] with meta-train class indices y [N]."""
        head = {k[len(GLOBAL_HEAD) :]: v for k, v in params.items() if k.startswith(GLOBAL_HEAD)}
        logits = head_logits(head, self.forward(model_params(params), x, embed=True), self.cosine_scale)
        return F.cross_entropy(logits, y, reduction="none"), logits

    def meta_gradients(self, params: Params, episodes: list[Episode], iteration: int = 0) -> MetaStep:
        """∇ of the mean cross-entropy over all pictures of `episodes` w.r.t. the body and the global
        head (zero for the model's own head); per-task mean loss and global accuracy ([T] each)."""
        x, y = global_batch(episodes)
        keys = [k for k in params if not k.startswith("head.")]
        per_picture, logits = self.global_loss(params, x, y)
        grads = dict(zip(keys, torch.autograd.grad(per_picture.mean(), [params[k] for k in keys])))
        grads |= {k: torch.zeros_like(v) for k, v in params.items() if k not in grads}
        correct = (logits.argmax(-1) == y).to(per_picture.dtype)
        tasks = len(episodes)
        return MetaStep(grads, per_picture.detach().view(tasks, -1).mean(1), correct.view(tasks, -1).mean(1))

    def adapt(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        steps: int,
        lr: float | None = None,
    ) -> Params:
        """The frozen body with a fresh head fitted on the support features (support_x
        [S, C, H, W], support_y [S]); see `fit_head`."""
        weights = model_params(params)
        features = self.forward(weights, support_x, embed=True).detach()
        lr = self.inner_lr if lr is None else lr
        head = fit_head(features, support_y, self.ways, steps, lr, self.cosine_scale)
        return {**weights, **{f"head.{k}": v for k, v in head.items()}}
