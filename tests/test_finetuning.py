"""metafew.finetuning and metafew.selection: the fine-tuning recipe, its unlabeled terms, the
held-out step choice, test-time views, and the cross-validated estimate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metafew.augment import augment_spec
from metafew.config import Config
from metafew.data import load_data, to_float
from metafew.errors import ConfigError
from metafew.finetuning import (
    balanced_pseudo_labels,
    entropy,
    finetune,
    fit,
    fixmatch_loss,
    frozen_stats,
    predict_proba,
    soft_kmeans_head,
    stratified_holdout,
)
from metafew.learner import Learner, build_learner
from metafew.selection import cross_validate, stratified_folds, wilson_interval


@pytest.fixture
def learner(tiny_cfg: Config) -> Learner:
    return build_learner(tiny_cfg, torch.device("cpu"), 5)


@pytest.fixture
def novel(tiny_cfg: Config):
    return load_data(tiny_cfg.data).novel


def test_holdout_is_stratified_disjoint_and_seeded() -> None:
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 1)
    kept, held = stratified_holdout(labels, 0.2, seed=3)
    assert sorted(kept.tolist() + held.tolist()) == list(range(16))
    assert torch.bincount(labels[held], minlength=3).tolist() == [2, 1, 0]  # a single picture stays
    again = stratified_holdout(labels, 0.2, seed=3)
    assert torch.equal(again[1], held) and not torch.equal(stratified_holdout(labels, 0.2, seed=4)[1], held)


def test_entropy_is_log_ways_when_uniform_and_zero_when_certain() -> None:
    assert float(entropy(torch.zeros(4, 5))) == pytest.approx(math.log(5))
    assert float(entropy(torch.tensor([[100.0, 0.0, 0.0]]))) == pytest.approx(0.0, abs=1e-6)


def test_fixmatch_keeps_only_confident_pseudo_labels() -> None:
    weak = torch.tensor([[4.0, 0.0], [0.1, 0.0]])  # confident 0.982 -> class 0; unsure 0.525
    strong = torch.tensor([[0.0, 1.0], [5.0, 0.0]])
    expected = F.cross_entropy(strong[:1], torch.tensor([0])) / 2  # the mean over both pictures
    assert float(fixmatch_loss(weak, strong, 0.9)) == pytest.approx(float(expected))
    assert float(fixmatch_loss(weak, strong, 0.99)) == 0.0
    weak.requires_grad_(True)
    fixmatch_loss(weak, strong.requires_grad_(True), 0.9).backward()
    assert weak.grad is None  # the pseudo-label is a target, not a path for gradients


def test_soft_kmeans_moves_the_prototypes_towards_the_unlabeled_pictures(
    tiny_cfg: Config, learner: Learner, novel
) -> None:
    x, y = to_float(novel.images), novel.labels
    params = learner.algorithm.adapt(learner.params, x, y, 0)
    refined = soft_kmeans_head(learner, params, x, y, x[:3], 3)
    features = learner.forward(params, torch.cat([x, x[:3]]), embed=True)
    fx, fu = features[: len(x)], features[len(x) :]
    centers = torch.stack([fx[y == k].mean(0) for k in range(3)])
    z = torch.softmax(-(torch.cdist(fu, centers) ** 2), dim=-1)
    expected = torch.stack(
        [
            (fx[y == k].sum(0) + (z[:, k : k + 1] * fu).sum(0)) / ((y == k).sum() + z[:, k].sum())
            for k in range(3)
        ]
    )
    torch.testing.assert_close(refined["head.weight"], 2 * expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(refined["head.bias"], -(expected**2).sum(-1), rtol=1e-4, atol=1e-5)
    # a second step starts from the first step's prototypes, not the labeled ones
    z = torch.softmax(-(torch.cdist(fu, expected) ** 2), dim=-1)
    second = torch.stack(
        [
            (fx[y == k].sum(0) + (z[:, k : k + 1] * fu).sum(0)) / ((y == k).sum() + z[:, k].sum())
            for k in range(3)
        ]
    )
    twice = soft_kmeans_head(learner, params, x, y, x[:3], 3, steps=2)
    torch.testing.assert_close(twice["head.weight"], 2 * second, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(second, expected, rtol=1e-3, atol=1e-4)  # the second step moved them


def test_zero_steps_is_the_algorithms_own_adaptation(tiny_cfg: Config, learner: Learner, novel) -> None:
    tiny_cfg.finetune.steps = 0
    fitted = fit(tiny_cfg, learner, novel.images, novel.labels)
    expected = learner.algorithm.adapt(learner.params, to_float(novel.images), novel.labels, 10)
    assert fitted.steps == 0 and fitted.curve == []
    for k, v in expected.items():
        torch.testing.assert_close(fitted.params[k], v.detach())


def test_training_fits_the_labeled_pictures_and_is_reproducible(
    tiny_cfg: Config, learner: Learner, novel
) -> None:
    tiny_cfg.finetune.holdout, tiny_cfg.finetune.adapt_steps = 0.0, 0
    tiny_cfg.finetune.steps, tiny_cfg.finetune.lr = 40, 1e-2
    x, y = to_float(novel.images), novel.labels

    def loss(params) -> float:
        stats = frozen_stats(learner, params, x, None)
        return float(F.cross_entropy(learner.forward(params, x, stats), y))

    before = fit(tiny_cfg, learner, novel.images, novel.labels, None)
    assert before.steps == 40
    tiny_cfg.finetune.steps = 0
    untrained = fit(tiny_cfg, learner, novel.images, novel.labels, None)
    assert loss(before.params) < 0.5 * loss(untrained.params)
    tiny_cfg.finetune.steps = 40
    again = fit(tiny_cfg, learner, novel.images, novel.labels, None)
    for k in before.params:
        assert torch.equal(before.params[k], again.params[k]), k  # seeded batches and transforms


def test_head_only_leaves_the_body_as_adapted(tiny_cfg: Config, learner: Learner, novel) -> None:
    tiny_cfg.finetune.params, tiny_cfg.finetune.steps, tiny_cfg.finetune.holdout = "head", 5, 0.0
    fitted = fit(tiny_cfg, learner, novel.images, novel.labels)
    tiny_cfg.finetune.steps = 0
    start = fit(tiny_cfg, learner, novel.images, novel.labels)
    changed = {k for k in start.params if not torch.equal(start.params[k], fitted.params[k])}
    assert changed == {"head.weight", "head.bias"}


def test_early_stopping_refits_for_the_step_of_the_lowest_held_out_loss(
    tiny_cfg: Config, learner: Learner, novel
) -> None:
    tiny_cfg.finetune.steps, tiny_cfg.finetune.eval_every, tiny_cfg.finetune.holdout = 30, 5, 0.34
    fitted = fit(tiny_cfg, learner, novel.images, novel.labels)
    assert [c[0] for c in fitted.curve] == [0, 5, 10, 15, 20, 25, 30]
    assert fitted.steps == min(fitted.curve, key=lambda c: (round(c[1], 6), c[0]))[0]
    tiny_cfg.finetune.holdout, tiny_cfg.finetune.steps = 0.0, fitted.steps
    plain = fit(tiny_cfg, learner, novel.images, novel.labels)  # the refit is a plain fit of that length
    for k in plain.params:
        assert torch.equal(plain.params[k], fitted.params[k]), k


@pytest.mark.parametrize("method", ["entropy", "fixmatch", "softkmeans", "selftrain"])
def test_unlabeled_methods_change_the_fit_and_need_pictures(
    tiny_cfg: Config, learner: Learner, novel, method: str
) -> None:
    tiny_cfg.finetune.steps, tiny_cfg.finetune.holdout, tiny_cfg.finetune.threshold = 5, 0.0, 0.3
    tiny_cfg.finetune.student_steps = 5
    unlabeled = load_data(tiny_cfg.data).unlabeled.images
    supervised, _ = finetune(tiny_cfg, learner, novel)
    tiny_cfg.finetune.unlabeled = method
    with pytest.raises(ConfigError, match="needs unlabeled pictures"):
        finetune(tiny_cfg, learner, novel)
    semi, _ = finetune(tiny_cfg, learner, novel, unlabeled)
    assert not torch.allclose(semi.params["head.weight"], supervised.params["head.weight"])
    # the statistics include the unlabeled pictures, then stay fixed
    stats = frozen_stats(learner, semi.params, to_float(torch.cat([novel.images, unlabeled])), None)
    torch.testing.assert_close(semi.stats[0][0], stats[0][0])


@pytest.mark.parametrize(("method", "views"), [("entropy", 1), ("fixmatch", 2)])
def test_each_step_draws_unlabeled_batch_pictures_of_the_unlabeled_set(
    tiny_cfg: Config, learner: Learner, novel, method: str, views: int
) -> None:
    tiny_cfg.finetune.steps, tiny_cfg.finetune.unlabeled = 3, method
    unlabeled = load_data(tiny_cfg.data).unlabeled.images
    seen: list[int] = []
    forward = learner.forward

    def counting(params, x, *args, **kwargs):
        if torch.is_grad_enabled() and not kwargs and not args:
            seen.append(len(x))  # a training step's forward: labeled + unlabeled views
        return forward(params, x, *args, **kwargs)

    learner.forward = counting  # type: ignore[method-assign]
    n = len(novel.labels)
    for batch, expected in [(0, len(unlabeled)), (2, 2), (len(unlabeled) + 5, len(unlabeled))]:
        seen.clear()
        tiny_cfg.finetune.unlabeled_batch = batch
        fit(tiny_cfg, learner, novel.images, novel.labels, unlabeled)
        assert seen == [n + views * expected] * 3, (batch, seen)


def test_pseudo_labels_are_the_most_confident_equally_many_per_predicted_class() -> None:
    probs = torch.tensor(
        [
            [0.9, 0.1, 0.0],  # 0: class 0, sure
            [0.6, 0.4, 0.0],  # 1: class 0, unsure
            [0.1, 0.8, 0.1],  # 2: class 1
            [0.0, 0.3, 0.7],  # 3: class 2, unsure
            [0.7, 0.2, 0.1],  # 4: class 0
            [0.0, 0.1, 0.9],  # 5: class 2, sure
        ]
    )
    index, label = balanced_pseudo_labels(probs, 0.5)  # floor(0.5 * 6 / 3) = 1 per class
    assert index.tolist() == [0, 2, 5] and label.tolist() == [0, 1, 2]
    index, label = balanced_pseudo_labels(probs, 1.0)  # 2 per class; class 1 has only one
    assert index.tolist() == [0, 2, 3, 4, 5] and label.tolist() == [0, 1, 2, 0, 2]
    assert balanced_pseudo_labels(probs, 0.3)[0].numel() == 0  # floor(0.6) = 0


def test_self_training_teaches_students_the_teachers_pseudo_labels(
    tiny_cfg: Config, learner: Learner, novel, monkeypatch: pytest.MonkeyPatch
) -> None:
    ft = tiny_cfg.finetune
    ft.steps, ft.holdout, ft.members, ft.student_steps, ft.unlabeled_batch = 4, 0.0, 2, 3, 5
    data = load_data(tiny_cfg.data)
    unlabeled = torch.cat([data.unlabeled.images, data.novel.images])  # 12 + 18 pictures
    teacher, _ = finetune(tiny_cfg, learner, novel)  # selftrain's teacher is the supervised model
    expected = predict_proba(learner, teacher, unlabeled)

    import metafew.finetuning as finetuning

    heard: list[torch.Tensor] = []
    choose = finetuning.balanced_pseudo_labels

    def spy(probs: torch.Tensor, keep: float) -> tuple[torch.Tensor, torch.Tensor]:
        heard.append(probs)
        return choose(probs, keep)

    monkeypatch.setattr(finetuning, "balanced_pseudo_labels", spy)
    sizes: list[int] = []
    forward = learner.forward

    def counting(params, x, *args, **kwargs):
        if torch.is_grad_enabled() and not kwargs and not args:
            sizes.append(len(x))  # a training step's forward
        return forward(params, x, *args, **kwargs)

    learner.forward = counting  # type: ignore[method-assign]
    ft.unlabeled, ft.pseudo_keep, ft.rounds = "selftrain", 0.5, 2
    student, fits = finetune(tiny_cfg, learner, novel, unlabeled)
    assert len(heard) == 2 and len(fits) == 2 and [f.steps for f in fits] == [3, 3]
    torch.testing.assert_close(heard[0], expected)  # round 1: the supervised ensemble's probabilities
    n = len(novel.labels)  # 2 teachers x 4 steps on the labeled pictures, 2 rounds x 2 students x 3
    assert sizes == [n] * 8 + [n + 5] * 12, sizes  # steps on them + 5 of the 15 pseudo-labeled ones
    probs = predict_proba(learner, student, unlabeled)
    assert not torch.allclose(heard[1], heard[0])  # round 2's teacher: round 1's students
    chunked = predict_proba(learner, student, unlabeled, batch_size=7)
    torch.testing.assert_close(chunked, probs, rtol=1e-5, atol=1e-6)  # fixed: batches do not matter
    again, _ = finetune(tiny_cfg, learner, novel, unlabeled)
    for k in student.params:
        assert torch.equal(again.params[k], student.params[k]), k


def test_a_student_without_pseudo_labels_is_a_supervised_fit_of_its_steps(
    tiny_cfg: Config, learner: Learner, novel
) -> None:
    ft = tiny_cfg.finetune
    ft.steps, ft.holdout, ft.members, ft.student_steps = 2, 0.0, 1, 3
    ft.unlabeled, ft.pseudo_keep = "selftrain", 0.01  # floor(0.01 * 4 / 3) = 0 pictures a class
    unlabeled = load_data(tiny_cfg.data).unlabeled.images[:4]
    _, fits = finetune(tiny_cfg, learner, novel, unlabeled)
    ft.unlabeled, ft.steps = "none", 3
    plain = fit(tiny_cfg, learner, novel.images, novel.labels)
    for k in plain.params:
        assert torch.equal(fits[0].params[k], plain.params[k]), k  # finite: no mean over nothing


def test_a_seed_ensemble_averages_members_fitted_with_successive_seeds(
    tiny_cfg: Config, learner: Learner, novel
) -> None:
    tiny_cfg.finetune.steps, tiny_cfg.finetune.holdout, tiny_cfg.finetune.members = 3, 0.0, 2
    ensemble, fits = finetune(tiny_cfg, learner, novel)
    assert len(fits) == 2 and len(ensemble.members) == 2
    tiny_cfg.finetune.members, singles = 1, []
    for seed in (0, 1):
        tiny_cfg.finetune.seed = seed
        single, _ = finetune(tiny_cfg, learner, novel)
        singles.append(predict_proba(learner, single, novel.images))
    assert not torch.allclose(singles[0], singles[1])  # the seeds draw other transforms
    mean = (singles[0] + singles[1]) / 2
    torch.testing.assert_close(predict_proba(learner, ensemble, novel.images), mean, rtol=0, atol=1e-6)


def test_test_time_views_average_and_do_not_depend_on_the_batch(
    tiny_cfg: Config, learner: Learner, novel
) -> None:
    tiny_cfg.finetune.steps, tiny_cfg.finetune.tta = 0, 4
    model, _ = finetune(tiny_cfg, learner, novel)
    spec = augment_spec(tiny_cfg)
    images = novel.images
    plain = predict_proba(learner, model, images)  # no spec: the picture alone
    model.tta = 1
    torch.testing.assert_close(predict_proba(learner, model, images, spec=spec), plain)
    model.tta = 4
    views = predict_proba(learner, model, images, spec=spec)
    assert not torch.allclose(views, plain)
    torch.testing.assert_close(views.sum(-1), torch.ones(len(images)))
    chunked = predict_proba(learner, model, images, batch_size=5, spec=spec)
    torch.testing.assert_close(chunked, views, rtol=1e-5, atol=1e-6)  # same views whatever the chunks
    alone = predict_proba(learner, model, images[7:8], spec=spec)
    assert not torch.allclose(alone, views[7:8])  # picture 7's views are those of position 0 here ...
    shifted = predict_proba(learner, model, images[:8], spec=spec)
    torch.testing.assert_close(shifted, views[:8], rtol=1e-5, atol=1e-6)  # ... and of 0..7 there


def test_folds_partition_every_class_evenly() -> None:
    labels = torch.tensor([0] * 15 + [1] * 15 + [2] * 7)
    folds = stratified_folds(labels, 5, seed=0)
    assert sorted(torch.cat(folds).tolist()) == list(range(37))
    for c, n in [(0, 15), (1, 15), (2, 7)]:
        per_fold = [int((labels[f] == c).sum()) for f in folds]
        assert sum(per_fold) == n and max(per_fold) - min(per_fold) <= 1
    assert max(len(f) for f in folds) - min(len(f) for f in folds) <= 1


def test_wilson_interval_matches_its_formula() -> None:
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)  # z²/(n+z²) at p = 0
    low, high = wilson_interval(70, 75)
    assert low == pytest.approx(0.8532, abs=1e-4) and high == pytest.approx(0.9712, abs=1e-4)  # by hand
    assert wilson_interval(5, 10)[0] == pytest.approx(1 - wilson_interval(5, 10)[1])


def test_cross_validation_predicts_every_picture_once_and_is_reproducible(
    tiny_cfg: Config, learner: Learner, novel
) -> None:
    tiny_cfg.finetune.steps = 3
    correct = cross_validate(tiny_cfg, learner, novel, None, 3)
    assert correct.shape == (len(novel.labels),) and correct.dtype == np.bool_
    assert np.array_equal(correct, cross_validate(tiny_cfg, learner, novel, None, 3))
