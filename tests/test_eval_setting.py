"""eval.ways / eval.shots: test episodes with another N or K than training's (issue 13: a
ProtoNet trained on 20-way episodes is tested on 5-way and 20-way ones)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import TINY_ARGS, assert_user_error, invoke, ok, only_child, tiny

from metafew.config_load import episode_setting, load_config
from metafew.data import load_data


@pytest.fixture(scope="module")
def protonet_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 3-way ProtoNet run on the glyphs (5 meta-train classes, 3 novel ones)."""
    runs_dir = tmp_path_factory.mktemp("setting") / "runs"
    ok("train", *tiny(runs_dir, "algorithm.name=protonet", "runtime.threads=1"))
    return only_child(runs_dir)


def eval_json(run: Path, *overrides: str) -> dict:
    """The summary `metafew eval RUN eval.episodes=6 *overrides` wrote, with its file name as "_name"."""
    before = set((run / "eval").glob("*.json")) if (run / "eval").exists() else set()
    ok("eval", run, "eval.episodes=6", *overrides)
    (path,) = set((run / "eval").glob("*.json")) - before
    return {**json.loads(path.read_text()), "_name": path.name}


def test_episode_setting_replaces_only_what_is_set() -> None:
    cfg = load_config(None, ["task.ways=20", "task.shots=1", "algorithm.name=protonet"])
    assert (episode_setting(cfg).task.ways, episode_setting(cfg).task.shots) == (20, 1)
    cfg = load_config(None, ["task.ways=20", "task.shots=1", "algorithm.name=protonet", "eval.ways=5"])
    setting = episode_setting(cfg)
    assert (setting.task.ways, setting.task.shots, setting.task.queries) == (5, 1, cfg.task.queries)
    assert cfg.task.ways == 20  # the run's own config is left alone
    assert episode_setting(load_config(None, ["eval.shots=3"])).task.shots == 3


def test_protonet_is_tested_on_another_way_and_shot(protonet_run: Path) -> None:
    summary = eval_json(protonet_run, "eval.ways=2", "eval.shots=1")
    assert (summary["ways"], summary["shots"]) == (2, 1)
    queries = summary["queries"]
    # every episode scores 2 * queries pictures, so each accuracy is a multiple of 1 / (2 * queries)
    for acc in summary["per_episode"]:
        assert abs(acc * 2 * queries - round(acc * 2 * queries)) < 1e-5  # accuracies are float32
    assert 0.0 <= summary["accuracy"] <= 1.0


def test_eval_ways_equal_to_task_ways_changes_nothing(protonet_run: Path) -> None:
    plain = eval_json(protonet_run)
    same = eval_json(protonet_run, "eval.ways=3", "eval.shots=2")
    assert same["per_episode"] == plain["per_episode"]
    assert (same["ways"], same["shots"]) == (3, 2)


def test_more_shots_at_test_time_leave_fewer_queries(protonet_run: Path) -> None:
    # 6 labeled pictures per novel class: 4 shots leave 2 queries (task.queries is 3)
    summary = eval_json(protonet_run, "eval.shots=4")
    assert (summary["shots"], summary["queries"]) == (4, 2)


def test_an_algorithm_with_a_meta_learned_head_refuses_another_way(tmp_path: Path) -> None:
    result = invoke("train", *tiny(tmp_path / "runs", "eval.ways=2"))
    assert_user_error(result, 2, "eval.ways = 2", "maml", "3-way head")
    assert not (tmp_path / "runs").exists()


def test_the_finetune_recipe_runs_on_another_way(protonet_run: Path) -> None:
    # ProtoNet's adaptation writes a fresh head of the episode's N, so its fine-tuning recipe
    # (and the transductive soft k-means one) is not tied to the training N
    for unlabeled in ("none", "softkmeans"):
        recipe = ("eval.finetune=true", "finetune.steps=0", f"finetune.unlabeled={unlabeled}")
        summary = eval_json(protonet_run, "eval.ways=2", *recipe)
        assert (summary["ways"], summary["transductive"]) == (2, unlabeled == "softkmeans")
        for acc in summary["per_episode"]:
            assert abs(acc * 2 * summary["queries"] - round(acc * 2 * summary["queries"])) < 1e-5


def test_validation_episodes_are_drawn_from_the_validation_classes(protonet_run: Path) -> None:
    test = eval_json(protonet_run)
    val = eval_json(protonet_run, "eval.split=meta_val")
    assert (test["split"], val["split"]) == ("novel", "meta_val")
    assert val["novel"] != test["novel"]  # the fingerprint of other pictures
    data = load_data(load_config(None, [*TINY_ARGS]).data)
    assert val["novel"] == data.meta_val.fingerprint()
    assert test["novel"] == data.novel.fingerprint()
    # a paired difference between the two would compare other episodes: refused
    result = invoke("diff", protonet_run / "eval" / test["_name"], protonet_run / "eval" / val["_name"])
    assert_user_error(result, 2, "split")


def test_validation_episodes_need_validation_classes(tmp_path: Path) -> None:
    no_val = ("algorithm.name=protonet", "data.glyphs.val_classes=0", "runtime.threads=1")
    ok("train", *tiny(tmp_path / "runs", *no_val))
    result = invoke("eval", only_child(tmp_path / "runs"), "eval.split=meta_val")
    assert_user_error(result, 2, "eval.split = meta_val", "no meta-validation classes")


@pytest.mark.parametrize("algorithm", ["protonet", "pretrain"])
def test_a_run_trained_on_fewer_ways_fine_tunes_and_predicts_all_novel_classes(
    tmp_path: Path, algorithm: str
) -> None:
    # trained on 2-way episodes; the glyphs have 3 novel classes
    ok("train", *tiny(tmp_path / "runs", f"algorithm.name={algorithm}", "task.ways=2", "runtime.threads=1"))
    run = only_child(tmp_path / "runs")
    ok("finetune", run, "finetune.steps=2", "runtime.threads=1")
    model = only_child(run / "finetune")
    record = json.loads((model / "finetune.json").read_text())
    assert len(record["classes"]) == 3
    ok("predict", model)
    lines = (only_child(model / "predict") / "predictions.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert sum(name.startswith("p_") for name in header) == 3, header
    assert {row.split(",")[1] for row in lines[1:]} <= set(record["classes"])


def test_an_algorithm_with_a_meta_learned_head_fine_tunes_on_its_own_way_only(tmp_path: Path) -> None:
    ok("train", *tiny(tmp_path / "runs", "task.ways=2", "train.iterations=2", "runtime.threads=1"))
    result = invoke("finetune", only_child(tmp_path / "runs"), "runtime.threads=1")
    assert_user_error(result, 3, "2 outputs", "3 labeled novel classes", "protonet and pretrain")
