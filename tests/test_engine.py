"""Engine: confidence intervals, evaluation modes, fine-tuning, divergence, resume state."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from metafew import engine
from metafew.allocator import tune_allocator
from metafew.augment import augment_spec
from metafew.checkpoints import FORMAT as CHECKPOINT_FORMAT
from metafew.checkpoints import load_checkpoint, load_meta, restore_rng_states, rng_states, save_checkpoint
from metafew.config import Config
from metafew.config_load import to_dict
from metafew.data import load_data, to_float
from metafew.errors import ConfigError, DataError, DivergedError, Interrupted, RunError
from metafew.evaluation import confidence_interval, evaluate, queries_per_class
from metafew.finetuning import Finetuned, finetune, predict_proba
from metafew.learner import Learner, build_learner, norm_stats
from metafew.runs import create_run, read_metrics
from metafew.system import resolve_device
from metafew.tasks import EpisodeSampler


def test_confidence_interval_is_mean_and_1_96_standard_errors() -> None:
    accs = np.array([0.5, 0.7, 0.9, 0.6])
    mean, ci = confidence_interval(accs)
    assert mean == pytest.approx(0.675)
    assert ci == pytest.approx(1.96 * np.std(accs, ddof=1) / 2)
    assert confidence_interval(np.array([0.8])) == (0.8, 0.0)


def _learner_and_sampler(cfg: Config) -> tuple[Learner, EpisodeSampler]:
    data = load_data(cfg.data)
    sampler = EpisodeSampler(data.novel, cfg.task.ways, cfg.task.shots, 3, seed=5)
    return build_learner(cfg, torch.device("cpu"), 5), sampler


@pytest.mark.parametrize("norm", ["transductive", "support"])
def test_evaluate_gives_the_same_accuracies_in_any_chunk_size(tiny_cfg: Config, norm: str) -> None:
    learner, sampler = _learner_and_sampler(tiny_cfg)
    one = evaluate(learner, sampler, 7, steps=2, lr=0.4, norm=norm, chunk=1)
    many = evaluate(learner, sampler, 7, steps=2, lr=0.4, norm=norm, chunk=3)
    np.testing.assert_allclose(one, many, atol=1e-6)
    assert one.shape == (7,) and ((one >= 0) & (one <= 1)).all()


def test_evaluate_matches_a_manual_adapt_and_classify(tiny_cfg: Config) -> None:
    learner, sampler = _learner_and_sampler(tiny_cfg)
    sx, sy, qx, qy = sampler.episode(2).as_tuple()
    adapted = learner.algorithm.adapt(learner.params, sx, sy, 2, 0.4)
    stats = norm_stats(learner, adapted, sx)
    expected = {
        "transductive": float((learner.forward(adapted, qx).argmax(-1) == qy).float().mean()),
        "support": float((learner.forward(adapted, qx, stats).argmax(-1) == qy).float().mean()),
    }
    for norm, value in expected.items():
        assert evaluate(learner, sampler, 3, 2, 0.4, norm, chunk=3)[2] == pytest.approx(value)


def test_test_queries_use_what_the_novel_classes_allow(tiny_cfg: Config) -> None:
    novel = load_data(tiny_cfg.data).novel  # 6 labeled per class, 2 shots -> 4 left, capped at 3 queries
    assert queries_per_class(tiny_cfg, novel) == 3
    tiny_cfg.task.queries = 10
    assert queries_per_class(tiny_cfg, novel) == 4
    tiny_cfg.task.shots = 6
    with pytest.raises(DataError, match=r"more than task\.shots = 6"):
        queries_per_class(tiny_cfg, novel)


def test_finetune_adapts_on_all_labeled_pictures_and_freezes_their_statistics(tiny_cfg: Config) -> None:
    tiny_cfg.finetune.adapt_steps, tiny_cfg.finetune.adapt_lr, tiny_cfg.finetune.steps = 4, 0.2, 0
    learner, _ = _learner_and_sampler(tiny_cfg)
    novel = load_data(tiny_cfg.data).novel
    model, _ = finetune(tiny_cfg, learner, novel)
    x = to_float(novel.images)
    expected = learner.algorithm.adapt(learner.params, x, novel.labels, 4, 0.2)
    for k, v in expected.items():
        torch.testing.assert_close(model.params[k], v.detach())
    mean, var = model.stats[0]
    first = torch.nn.functional.conv2d(
        x, model.params["blocks.0.conv.weight"], model.params["blocks.0.conv.bias"], padding=1
    )
    torch.testing.assert_close(mean.flatten(), first.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(var.flatten(), first.var(dim=(0, 2, 3), unbiased=False), rtol=1e-4, atol=1e-5)
    assert model.classes == novel.classes
    restored = Finetuned.from_record(model.record({}, learner.train_classes), torch.device("cpu"))
    probs = predict_proba(learner, restored, novel.images)
    torch.testing.assert_close(probs, predict_proba(learner, model, novel.images))
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(probs)))


def test_finetune_refuses_a_different_number_of_classes(tiny_cfg: Config) -> None:
    tiny_cfg.data.glyphs.novel_classes = 4
    learner = build_learner(tiny_cfg, torch.device("cpu"), 5)
    with pytest.raises(DataError, match=r"3 outputs .* 4 labeled novel"):
        finetune(tiny_cfg, learner, load_data(tiny_cfg.data).novel)


def test_training_writes_metrics_and_checkpoints(tiny_cfg: Config) -> None:
    run = create_run(tiny_cfg, "cpu")
    state = engine.train(tiny_cfg, load_data(tiny_cfg.data), run)
    records = read_metrics(run)
    assert [r["iteration"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert [r["iteration"] for r in records if "val_accuracy" in r] == [2, 4]
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert last["iteration"] == 4 and state.iteration == 4
    vals = {r["iteration"]: r["val_accuracy"] for r in records if "val_accuracy" in r}
    assert best["iteration"] == max(vals, key=lambda k: (vals[k], -k)) == state.best_iteration
    assert best["best_accuracy"] == pytest.approx(max(vals.values()))
    assert (run / "learning_curve.png").stat().st_size > 1000
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)


def test_divergence_stops_without_touching_checkpoints(tiny_cfg: Config) -> None:
    run = create_run(tiny_cfg, "cpu")
    engine.train(tiny_cfg, load_data(tiny_cfg.data), run)
    before = (run / "checkpoints" / "last.pt").read_bytes()
    tiny_cfg.algorithm.inner_lr = 1e30
    tiny_cfg.train.iterations = 8
    resume = load_meta(run / "checkpoints" / "last.pt")
    with pytest.raises(DivergedError, match="iteration 5: meta-loss is"):
        engine.train(tiny_cfg, load_data(tiny_cfg.data), run, resume=resume)
    assert (run / "checkpoints" / "last.pt").read_bytes() == before


def test_stop_request_checkpoints_the_completed_iteration(tiny_cfg: Config) -> None:
    tiny_cfg.train.iterations = 50
    run = create_run(tiny_cfg, "cpu")
    done = [0]  # a request that arrives during the third step (checked before, between, after)
    from metafew.errors import Interrupted

    def progress(iteration: int, total: int, record: dict[str, float]) -> None:
        done[0] = iteration

    with pytest.raises(Interrupted, match="after iteration 3"):
        engine.train(
            tiny_cfg, load_data(tiny_cfg.data), run, progress=progress, stop_requested=lambda: done[0] >= 3
        )
    assert load_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == 3


def test_checkpoint_holds_everything_a_continuation_needs(tiny_cfg: Config) -> None:
    run = create_run(tiny_cfg, "cpu")
    engine.train(tiny_cfg, load_data(tiny_cfg.data), run)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["format"] == CHECKPOINT_FORMAT and state["kind"] == "meta"
    assert state["iteration"] == 4 and state["config"] == to_dict(tiny_cfg)
    assert not {"sampler", "schedule"} & set(state)  # format 1's fields that nothing read
    assert set(state["rng"]) == {"python", "numpy", "torch", "cuda"}
    assert len(state["optimizer"]["state"]) == len(state["params"])  # Adam moments of every tensor
    assert load_checkpoint(run / "checkpoints" / "last.prev.pt")["iteration"] == 2


def test_random_streams_survive_a_checkpoint(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_states()})
    expected = (random.random(), np.random.rand(), np.random.randn(), torch.rand(2))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_states(load_checkpoint(tmp_path / "rng.pt")["rng"])
    again = (random.random(), np.random.rand(), np.random.randn(), torch.rand(2))
    assert again[:3] == expected[:3] and torch.equal(again[3], expected[3])


def test_resume_restores_the_global_random_streams(tiny_cfg: Config) -> None:
    run = create_run(tiny_cfg, "cpu")
    engine.train(tiny_cfg, load_data(tiny_cfg.data), run)
    saved = load_meta(run / "checkpoints" / "last.pt")
    random.seed(123)
    engine.train(tiny_cfg, load_data(tiny_cfg.data), run, resume=saved)  # nothing left to do
    after = random.random()
    restore_rng_states(saved.rng)
    assert random.random() == after  # the stream continues from the checkpoint's state
    random.seed(123)
    assert random.random() != after


def test_resume_with_another_seed_is_refused(tiny_cfg: Config) -> None:
    run = create_run(tiny_cfg, "cpu")
    engine.train(tiny_cfg, load_data(tiny_cfg.data), run)
    saved = load_meta(run / "checkpoints" / "last.pt")
    tiny_cfg.train.seed = 5
    with pytest.raises(RunError, match=r"train\.seed = 0, the config says 5"):
        engine.train(tiny_cfg, load_data(tiny_cfg.data), run, resume=saved)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match=r"runtime\.device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


def test_allocator_tuning_can_be_switched_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("METAFEW_MALLOC", "default")
    assert tune_allocator() is False


def test_augmented_episodes_depend_on_the_seed_and_the_task_only(tiny_cfg: Config) -> None:
    sampler, _ = engine.training_samplers(tiny_cfg, load_data(tiny_cfg.data))
    spec = augment_spec(tiny_cfg)
    episode = sampler.episode(3)
    assert engine.augmented(episode, None) is episode
    once, again = engine.augmented(episode, spec, 7), engine.augmented(sampler.episode(3), spec, 7)
    assert torch.equal(once.support_x, again.support_x) and torch.equal(once.query_x, again.query_x)
    assert not torch.equal(once.support_x, episode.support_x)
    assert torch.equal(once.support_y, episode.support_y) and torch.equal(once.query_y, episode.query_y)
    other_seed = engine.augmented(episode, spec, 8)
    assert not torch.equal(once.support_x, other_seed.support_x)


def test_training_with_augmentation_learns_something_else_and_resumes_exactly(tiny_cfg: Config) -> None:
    data = load_data(tiny_cfg.data)
    plain_run = create_run(tiny_cfg, "cpu")
    engine.train(tiny_cfg, data, plain_run)
    tiny_cfg.train.augment = True
    whole_run = create_run(tiny_cfg, "cpu")
    engine.train(tiny_cfg, data, whole_run)
    whole = load_checkpoint(whole_run / "checkpoints" / "last.pt")["params"]
    plain = load_checkpoint(plain_run / "checkpoints" / "last.pt")["params"]
    assert any(not torch.equal(whole[k], plain[k]) for k in whole)
    cut_run = create_run(tiny_cfg, "cpu")
    steps = iter(range(100))
    with pytest.raises(Interrupted):  # stopped after iteration 2, checkpointed
        engine.train(tiny_cfg, data, cut_run, stop_requested=lambda: next(steps) >= 2)
    saved = load_meta(cut_run / "checkpoints" / "last.pt")
    assert saved.iteration < 4
    engine.train(tiny_cfg, data, cut_run, resume=saved)
    resumed = load_checkpoint(cut_run / "checkpoints" / "last.pt")["params"]
    for k in whole:
        assert torch.equal(resumed[k], whole[k]), k
