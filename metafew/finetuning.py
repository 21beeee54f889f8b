"""M_meta -> M_finetune: fine-tuning as a training stage on the labeled novel pictures, the
unlabeled pictures put to work, and class probabilities (with test-time views) from the result.

The recipe (`finetune.*`):
1. The algorithm's own adaptation on all labeled pictures (`adapt_steps` at `adapt_lr`: MAML's α
   steps, ProtoNet's prototype head, Baseline's fitted head), so that step 0 is exactly what the
   meta-learned model was trained to do. With `unlabeled: softkmeans` the prototype head is then
   refined on the unlabeled pictures (soft k-means, Ren et al., ICLR 2018, eq. 3-4).
2. `steps` steps of Adam or SGD on the cross-entropy of the labeled pictures (augmented each step,
   seeded by (finetune.seed, step)), plus λ times an unlabeled term:
   - entropy: mean H(p(y|u)) over the unlabeled pictures (transductive fine-tuning, Dhillon,
     Chaudhari, Ravichandran & Soatto, ICLR 2020);
   - fixmatch: cross-entropy of a strongly augmented view against the pseudo-label of a weakly
     augmented one, kept where its confidence is ≥ τ (Sohn et al., NeurIPS 2020).
   Labeled and unlabeled pictures share one forward pass, hence one set of BatchNorm statistics.
3. Early stopping: with `holdout` > 0 the recipe first runs on the labeled pictures minus a
   stratified held-out part, scores that part every `eval_every` steps, keeps the step count of
   the lowest held-out loss, and then refits from step 1 on all labeled pictures for that many.
4. BatchNorm statistics are then computed once on the training pictures and frozen, so that a
   picture's prediction never depends on the other pictures of its batch.
5. With `members` > 1, steps 1-4 run once per member with seeds seed, seed+1, ... (each its own
   held-out part, batches and transforms), and M_finetune averages the members' probabilities:
   a seed ensemble, which lowers the variance that 75 labeled pictures leave in a single fit.
6. `unlabeled: selftrain` (self-training with a fresh student, as in Xie et al., CVPR 2020, without
   their noise schedule): steps 1-5 without the unlabeled pictures give the teacher; its most
   confident `pseudo_keep` share of the unlabeled pictures, equally many per predicted class,
   get its labels; each member then starts again from M_meta's adaptation on the labeled pictures
   and takes `student_steps` steps on the cross-entropy of all labeled pictures plus λ times that
   of `unlabeled_batch` pseudo-labeled ones (both augmented). With `rounds` > 1 the students are
   the next round's teacher.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from metafew.algorithms.protonet import prototype_head, prototypes, squared_distances
from metafew.augment import Augment, augment, augment_spec, tta_views, view_generator
from metafew.checkpoints import FinetunedCheckpoint
from metafew.config import Config, FinetuneConfig
from metafew.data import LabeledImages, to_float
from metafew.errors import ConfigError, DataError, Interrupted
from metafew.functional import Params
from metafew.learner import Learner, norm_stats
from metafew.models import NormStats
from metafew.progress import Advance, silent
from metafew.stopping import abandonable

StopRequested = Callable[[], bool]

UNLABELED_WEIGHTS = {"entropy": 0.1, "fixmatch": 1.0, "selftrain": 1.0}
"""λ where finetune.unlabeled_weight is null: entropy's from 5-fold estimates on fashion-seed's
labeled pictures (92.0% at 0.1 against 84.0% at 1; BENCHMARKS.md section 7), FixMatch's the
paper's; selftrain weighs a pseudo-labeled batch as much as the labeled one."""


def unlabeled_weight(ft: FinetuneConfig) -> float:
    """λ of the recipe: finetune.unlabeled_weight, or the method's default."""
    return (
        ft.unlabeled_weight if ft.unlabeled_weight is not None else UNLABELED_WEIGHTS.get(ft.unlabeled, 0.0)
    )


def as_float(images: torch.Tensor) -> torch.Tensor:
    """Pictures as float32 in [0, 1]: uint8 [..., C, H, W] scaled (to_float), floats kept."""
    return to_float(images) if images.dtype == torch.uint8 else images.float()


def stratified_holdout(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held) index tensors: round(fraction·n_c) pictures of every class c held out, at
    least one where the class has two or more and none where it has one; seeded."""
    generator = torch.Generator().manual_seed(seed)
    kept, held = [], []
    for c in labels.unique(sorted=True).tolist():
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_held = 0 if len(members) < 2 else max(1, round(fraction * len(members)))
        held.append(members[:n_held])
        kept.append(members[n_held:])
    return torch.sort(torch.cat(kept)).values, torch.sort(torch.cat(held)).values


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy (nats) of softmax(logits): [N, ways] -> scalar."""
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1).mean()


def fixmatch_loss(weak: torch.Tensor, strong: torch.Tensor, threshold: float) -> torch.Tensor:
    """FixMatch's unlabeled loss: weak, strong [N, ways] logits of two views of the same pictures;
    cross-entropy of `strong` against argmax(weak) where max softmax(weak) ≥ threshold, averaged
    over all N (so that few confident pictures give a small loss, as in the paper)."""
    confidence, pseudo = torch.softmax(weak.detach(), dim=-1).max(-1)
    mask = (confidence >= threshold).to(strong.dtype)
    return (F.cross_entropy(strong, pseudo, reduction="none") * mask).mean()


def balanced_pseudo_labels(probs: torch.Tensor, keep: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced pseudo-labels from a teacher's probabilities [m, ways]: of the pictures
    predicted as class c, the floor(keep·m/ways) most confident (all of them where fewer are
    predicted c; ties by index). Returns (index [k] ascending, label [k]) of the kept pictures."""
    confidence, predicted = probs.max(-1)
    per_class = int(keep * len(probs) / probs.shape[-1])
    kept = []
    for c in range(probs.shape[-1]):
        members = torch.nonzero(predicted == c).flatten()
        order = torch.argsort(confidence[members], descending=True, stable=True)
        kept.append(members[order[:per_class]])
    index = torch.sort(torch.cat(kept)).values
    return index, predicted[index]


def soft_kmeans_head(
    learner: Learner,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    unlabeled: torch.Tensor,
    ways: int,
    steps: int = 1,
) -> Params:
    """The prototype head refined by `steps` soft k-means steps on the unlabeled embeddings (Ren
    et al. 2018, eq. 3-4): c_k <- (Σ_{y=k} f(x) + Σ_u z_uk f(u)) / (n_k + Σ_u z_uk), with
    z_u = softmax(−‖f(u) − c‖²) from the previous c, starting at the labeled prototypes.
    x [n, C, H, W], y [n], unlabeled [m, C, H, W], floats."""
    features = learner.forward(params, torch.cat([x, unlabeled]), embed=True)
    fx, fu = features[: len(x)], features[len(x) :]
    onehot = F.one_hot(y, ways).to(fx.dtype)
    centers = prototypes(fx, y, ways)
    for _ in range(steps):
        z = torch.softmax(-squared_distances(fu, centers), dim=-1)  # [m, ways]
        centers = (onehot.T @ fx + z.T @ fu) / (onehot.sum(0) + z.sum(0))[:, None]
    return {**params, **prototype_head(centers)}


@dataclass
class Fitted:
    """Fine-tuned parameters and how they were chosen: `steps` optimizer steps of the final fit,
    and the held-out curve [(step, loss, accuracy)] that chose it (empty without a holdout)."""

    params: Params
    steps: int
    curve: list[tuple[int, float, float]] = field(default_factory=list)


def _start(
    cfg: Config, learner: Learner, x: torch.Tensor, y: torch.Tensor, unlabeled: torch.Tensor | None
) -> Params:
    """Step 0: the algorithm's own adaptation (and the soft k-means head), detached."""
    ft = cfg.finetune
    steps = cfg.algorithm.eval_inner_steps if ft.adapt_steps is None else ft.adapt_steps
    with torch.no_grad():  # torch.func.grad still differentiates the inner loop
        params = learner.algorithm.adapt(learner.params, x, y, steps, ft.adapt_lr)
        if ft.unlabeled == "softkmeans" and unlabeled is not None:
            params = soft_kmeans_head(learner, params, x, y, unlabeled, cfg.task.ways, ft.kmeans_steps)
    return {k: v.detach() for k, v in params.items()}


def _optimizer(ft: FinetuneConfig, leaves: list[torch.Tensor]) -> torch.optim.Optimizer:
    if ft.optimizer == "sgd":
        return torch.optim.SGD(leaves, lr=ft.lr, momentum=0.9, weight_decay=ft.weight_decay)
    return torch.optim.Adam(leaves, lr=ft.lr, weight_decay=ft.weight_decay)


def _train(
    learner: Learner,
    ft: FinetuneConfig,
    spec: Augment,
    start: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    unlabeled: torch.Tensor | None,
    steps: int,
    watch: Callable[[int, Params], None] | None,
    stop_requested: StopRequested,
    advance: Advance = silent,
    phase: str = "fine-tuning steps",
    pseudo: torch.Tensor | None = None,
) -> Params:
    """`steps` optimizer steps from `start` on float pictures x [n, C, H, W] with labels y [n] and
    (unless finetune.unlabeled is none) float unlabeled pictures [m, C, H, W], whose labels
    `pseudo` [m] selftrain's student is given; `watch(step, params)` after every
    finetune.eval_every steps; `advance(phase, step, steps)` after each. Step s draws its batch
    and transforms from view_generator(finetune.seed, s), so two fits of the same pictures are
    identical."""
    params = {
        k: v.clone().requires_grad_(ft.params == "all" or k.startswith("head.")) for k, v in start.items()
    }
    optimizer = _optimizer(ft, [p for p in params.values() if p.requires_grad])
    use_unlabeled = unlabeled is not None and (
        ft.unlabeled in ("entropy", "fixmatch") or (ft.unlabeled == "selftrain" and pseudo is not None)
    )
    strong = spec.scaled(ft.strong)
    for step in range(1, steps + 1):
        if stop_requested():
            raise Interrupted(f"stopped at fine-tuning step {step - 1} of {steps}")
        generator = view_generator(ft.seed, step)
        xb, yb = x, y
        if 0 < ft.batch_size < len(x):
            pick = torch.randperm(len(x), generator=generator)[: ft.batch_size].to(x.device)
            xb, yb = x[pick], y[pick]
        views = [augment(xb, spec, generator) if ft.augment else xb]
        if use_unlabeled:
            assert unlabeled is not None
            ub, pb = unlabeled, pseudo
            if 0 < ft.unlabeled_batch < len(unlabeled):
                upick = torch.randperm(len(unlabeled), generator=generator)[: ft.unlabeled_batch].to(x.device)
                ub, pb = unlabeled[upick], None if pseudo is None else pseudo[upick]
            weak = augment(ub, spec, generator) if ft.augment else ub
            views += [weak, augment(ub, strong, generator)] if ft.unlabeled == "fixmatch" else [weak]
        logits = learner.forward(params, torch.cat(views))
        parts = torch.split(logits, [len(v) for v in views])
        loss = F.cross_entropy(parts[0], yb)
        if ft.unlabeled == "entropy" and use_unlabeled:
            loss = loss + unlabeled_weight(ft) * entropy(parts[1])
        elif ft.unlabeled == "fixmatch" and use_unlabeled:
            loss = loss + unlabeled_weight(ft) * fixmatch_loss(parts[1], parts[2], ft.threshold)
        elif ft.unlabeled == "selftrain" and use_unlabeled:
            assert pb is not None
            loss = loss + unlabeled_weight(ft) * F.cross_entropy(parts[1], pb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if watch is not None and step % ft.eval_every == 0:
            watch(step, params)
        advance(phase, step, steps)
    return {k: v.detach() for k, v in params.items()}


def frozen_stats(
    learner: Learner, params: Params, x: torch.Tensor, unlabeled: torch.Tensor | None
) -> NormStats:
    """The BatchNorm statistics of the training pictures (labeled, plus unlabeled where the recipe
    used them), frozen for prediction."""
    with torch.no_grad():
        return norm_stats(learner, params, x if unlabeled is None else torch.cat([x, unlabeled]))


def fit(
    cfg: Config,
    learner: Learner,
    images: torch.Tensor,
    labels: torch.Tensor,
    unlabeled: torch.Tensor | None = None,
    *,
    stop_requested: StopRequested = lambda: False,
    advance: Advance = silent,
) -> Fitted:
    """The fine-tuning recipe of the module docstring on images [n, C, H, W] with labels [n] and
    optional unlabeled pictures [m, C, H, W] (uint8, or floats in [0, 1]). `stop_requested()` is
    checked before every step, and a StopSignal's signal stops at once (metafew.stopping):
    Interrupted. `advance` hears every step of both phases (the held-out search, the refit)."""
    with abandonable(stop_requested):  # nothing of a fit is kept if it is cut
        return _fit(cfg, learner, images, labels, unlabeled, stop_requested, advance)


def _fit(
    cfg: Config,
    learner: Learner,
    images: torch.Tensor,
    labels: torch.Tensor,
    unlabeled: torch.Tensor | None,
    stop_requested: StopRequested,
    advance: Advance,
) -> Fitted:
    ft = cfg.finetune
    spec = augment_spec(cfg)
    device = learner.device
    x, y = as_float(images).to(device), labels.to(device)
    u = None if unlabeled is None or ft.unlabeled == "none" else as_float(unlabeled).to(device)
    steps, curve = ft.steps, []
    if ft.holdout > 0 and ft.steps > 0:
        kept, held = stratified_holdout(labels, ft.holdout, ft.seed)
        if len(held):
            kept, held = kept.to(device), held.to(device)
            u_fold = u if u is None else torch.cat([u, x[held]])  # the held-out part is unlabeled too

            def score(step: int, params: Params) -> None:
                with torch.no_grad():
                    stats = frozen_stats(learner, params, x[kept], u_fold)
                    logits = learner.forward(params, x[held], stats)
                    curve.append(
                        (
                            step,
                            float(F.cross_entropy(logits, y[held])),
                            float((logits.argmax(-1) == y[held]).float().mean()),
                        )
                    )

            start = _start(cfg, learner, x[kept], y[kept], u_fold)
            score(0, start)
            search = "fine-tuning steps, held-out search"
            _train(
                learner,
                ft,
                spec,
                start,
                x[kept],
                y[kept],
                u_fold,
                ft.steps,
                score,
                stop_requested,
                advance,
                search,
            )
            steps = min(curve, key=lambda c: (round(c[1], 6), c[0]))[0]
    start = _start(cfg, learner, x, y, u)
    params = _train(learner, ft, spec, start, x, y, u, steps, None, stop_requested, advance)
    return Fitted(params, steps, curve)


# ---------------------------------------------------------------------------------------------
# M_finetune


@dataclass
class Finetuned:
    """M_finetune: adapted parameters, the BatchNorm statistics of its training pictures under
    them (frozen, so that each prediction depends on its own picture only), class names, the
    number of test-time views `predict` averages (1: none), and `others`, the further members of
    a seed ensemble (finetune.members > 1), whose probabilities are averaged with the first's."""

    params: Params
    stats: NormStats
    classes: list[str]
    tta: int = 1
    others: list[tuple[Params, NormStats]] = field(default_factory=list)

    @property
    def members(self) -> list[tuple[Params, NormStats]]:
        """Every member's (params, stats), the first one first."""
        return [(self.params, self.stats), *self.others]

    def record(self, config: dict[str, Any], train_classes: int) -> FinetunedCheckpoint:
        """What goes into model.pt."""
        return FinetunedCheckpoint(self.params, self.stats, self.classes, config, train_classes, self.others)

    @classmethod
    def from_record(cls, record: FinetunedCheckpoint, device: torch.device, tta: int = 1) -> Finetuned:
        """The inverse of `record`, on `device`."""
        members = [
            ({k: v.to(device) for k, v in params.items()}, [(m.to(device), v.to(device)) for m, v in stats])
            for params, stats in [(record.params, record.stats), *record.others]
        ]
        return cls(*members[0], list(record.classes), tta, members[1:])


def check_ways(cfg: Config, classes: list[str]) -> None:
    """DataError unless there is one labeled class per output of the model (task.ways)."""
    if len(classes) != cfg.task.ways:
        raise DataError(
            f"the model has {cfg.task.ways} outputs (task.ways) but {len(classes)} labeled novel classes "
            f"were given ({', '.join(classes)}); meta-train with task.ways={len(classes)} (protonet and "
            "pretrain fine-tune on any number of classes)"
        )


def finetune(
    cfg: Config,
    learner: Learner,
    labeled: LabeledImages,
    unlabeled: torch.Tensor | None = None,
    *,
    stop_requested: StopRequested = lambda: False,
    advance: Advance = silent,
) -> tuple[Finetuned, list[Fitted]]:
    """M_finetune from the meta-learned learner: `fit` on all labeled novel pictures (and the
    uint8 unlabeled ones [m, C, H, W] where finetune.unlabeled uses them), once per ensemble
    member; also each member's Fitted."""
    check_ways(cfg, labeled.classes)
    if cfg.finetune.unlabeled != "none" and unlabeled is None:
        raise ConfigError(
            f"finetune.unlabeled = {cfg.finetune.unlabeled} needs unlabeled pictures: give "
            "--unlabeled DIR, or finetune.unlabeled=none"
        )
    if cfg.finetune.unlabeled == "softkmeans" and cfg.model.head != "linear":
        raise ConfigError(
            "finetune.unlabeled = softkmeans writes prototypes into a linear head; use model.head=linear"
        )
    fits = fit_members(
        cfg,
        learner,
        labeled.images,
        labeled.labels,
        unlabeled,
        stop_requested=stop_requested,
        advance=advance,
    )
    return fitted_model(cfg, learner, fits, labeled.images, unlabeled, list(labeled.classes)), fits


def member_config(cfg: Config, member: int) -> Config:
    """The recipe of ensemble member `member` (0-based): finetune.seed + member."""
    return replace(cfg, finetune=replace(cfg.finetune, seed=cfg.finetune.seed + member))


def fit_members(
    cfg: Config,
    learner: Learner,
    images: torch.Tensor,
    labels: torch.Tensor,
    unlabeled: torch.Tensor | None = None,
    *,
    stop_requested: StopRequested = lambda: False,
    advance: Advance = silent,
) -> list[Fitted]:
    """`fit` once per ensemble member (finetune.members, seeds finetune.seed + i): each draws its
    own held-out part, batches and transforms; with finetune.unlabeled = selftrain, the students
    of `self_train` instead. With several members, `advance` hears each one's phases as
    "<phase> (member i of n)"."""
    if cfg.finetune.unlabeled == "selftrain" and unlabeled is not None:
        return self_train(
            cfg, learner, images, labels, unlabeled, stop_requested=stop_requested, advance=advance
        )
    n = cfg.finetune.members
    fits = []
    for i in range(n):
        member = member_config(cfg, i)
        fits.append(
            fit(
                member,
                learner,
                images,
                labels,
                unlabeled,
                stop_requested=stop_requested,
                advance=_member_phases(advance, i, n),
            )
        )
    return fits


def _member_phases(advance: Advance, member: int, members: int, suffix: str = "") -> Advance:
    """`advance` hearing "<phase><suffix> (member i of n)" (without the member where n is 1)."""

    def heard(phase: str, done: int, of: int) -> None:
        where = "" if members == 1 else f" (member {member + 1} of {members})"
        advance(f"{phase}{suffix}{where}", done, of)

    return heard


def _renamed(advance: Advance, phase: str) -> Advance:
    """`advance` hearing every phase as `phase`."""

    def heard(_: str, done: int, of: int) -> None:
        advance(phase, done, of)

    return heard


def self_train(
    cfg: Config,
    learner: Learner,
    images: torch.Tensor,
    labels: torch.Tensor,
    unlabeled: torch.Tensor,
    *,
    stop_requested: StopRequested = lambda: False,
    advance: Advance = silent,
) -> list[Fitted]:
    """Step 6 of the module docstring: the last round's students (one Fitted per member, `steps`
    the student's) from labeled images [n, C, H, W] with labels [n] and unlabeled pictures
    [m, C, H, W] (uint8, or floats in [0, 1]). The teacher's pseudo-labels come from
    `predict_proba` with its frozen statistics and finetune.tta views, so they do not depend on
    how the pictures are batched."""
    ft = cfg.finetune
    teacher_cfg = replace(cfg, finetune=replace(ft, unlabeled="none"))
    fits = fit_members(
        teacher_cfg, learner, images, labels, None, stop_requested=stop_requested, advance=advance
    )
    with abandonable(stop_requested):
        x, y = as_float(images).to(learner.device), labels.to(learner.device)
        u = as_float(unlabeled).to(learner.device)
        for r in range(ft.rounds):
            round_name = "" if ft.rounds == 1 else f", round {r + 1} of {ft.rounds}"
            teacher = fitted_model(cfg if r else teacher_cfg, learner, fits, x, u, [])
            probs = predict_proba(
                learner,
                teacher,
                u,
                spec=augment_spec(cfg),
                seed=ft.seed,
                stop_requested=stop_requested,
                advance=_renamed(advance, f"teacher's pseudo-labels{round_name}"),
            )
            index, pseudo = balanced_pseudo_labels(probs, ft.pseudo_keep)
            taught = u[index.to(u.device)] if len(index) else None  # none kept: a supervised student
            fits = []
            for i in range(ft.members):
                member = member_config(cfg, i)
                start = _start(member, learner, x, y, None)
                params = _train(
                    learner,
                    member.finetune,
                    augment_spec(member),
                    start,
                    x,
                    y,
                    taught,
                    ft.student_steps,
                    None,
                    stop_requested,
                    _member_phases(advance, i, ft.members, round_name),
                    "student steps",
                    pseudo.to(u.device),
                )
                fits.append(Fitted(params, ft.student_steps))
    return fits


def fitted_model(
    cfg: Config,
    learner: Learner,
    fits: list[Fitted],
    images: torch.Tensor,
    unlabeled: torch.Tensor | None,
    classes: list[str],
) -> Finetuned:
    """M_finetune from the members' fits: each member's BatchNorm statistics of the pictures it
    was trained on (images [n, C, H, W], plus `unlabeled` [m, C, H, W] where the recipe used
    them; uint8 or floats), frozen."""
    x = as_float(images).to(learner.device)
    used = None if cfg.finetune.unlabeled == "none" else unlabeled
    u = None if used is None else as_float(used).to(learner.device)
    members = [(f.params, frozen_stats(learner, f.params, x, u)) for f in fits]
    return Finetuned(*members[0], classes, cfg.finetune.tta, members[1:])


def predict_proba(
    learner: Learner,
    model: Finetuned,
    images: torch.Tensor,
    batch_size: int = 256,
    *,
    spec: Augment | None = None,
    seed: int = 0,
    stop_requested: StopRequested = lambda: False,
    advance: Advance = silent,
) -> torch.Tensor:
    """Class probabilities [n, ways] for images [n, C, H, W] (uint8, or floats in [0, 1]): the
    mean softmax over the ensemble's members and model.tta views (view 0 the picture itself; the
    others `tta_views` of `spec`, drawn per picture from (seed, view, index), so chunking does not
    change them).
    BatchNorm uses the frozen statistics of `model`, so a picture's result does not depend on the
    rest of the batch. `stop_requested()` is checked before each batch, and a StopSignal's signal
    stops at once: Interrupted naming how many pictures were done. `advance("pictures", done, n)`
    after each batch."""
    views = model.tta if spec is not None else 1
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            if stop_requested():
                raise Interrupted(f"stopped after {start} of {len(images)} pictures")
            chunk = images[start : start + batch_size]
            try:
                with abandonable(stop_requested):
                    x = (
                        as_float(chunk)[None]
                        if views == 1 or spec is None
                        else tta_views(chunk, spec, views, seed, offset=start)
                    ).to(learner.device)
                    probs = [
                        torch.softmax(learner.forward(params, x.flatten(0, 1), stats), dim=-1)
                        for params, stats in model.members
                    ]
                    out.append(torch.stack(probs).mean(0).view(x.shape[0], len(chunk), -1).mean(0).cpu())
            except Interrupted:
                raise Interrupted(f"stopped after {start} of {len(images)} pictures") from None
            advance("pictures", start + len(chunk), len(images))
    return torch.cat(out)
