"""eval.ways / eval.shots: test episodes with another N or K than training's (issue 13: a
ProtoNet trained on 20-way episodes is tested on 5-way and 20-way ones)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import assert_user_error, invoke, ok, only_child, tiny

from metafew.config_load import episode_setting, load_config


@pytest.fixture(scope="module")
def protonet_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 3-way ProtoNet run on the glyphs (5 meta-train classes, 3 novel ones)."""
    runs_dir = tmp_path_factory.mktemp("setting") / "runs"
    ok("train", *tiny(runs_dir, "algorithm.name=protonet", "runtime.threads=1"))
    return only_child(runs_dir)


def eval_json(run: Path, *overrides: str) -> dict:
    before = set((run / "eval").glob("*.json")) if (run / "eval").exists() else set()
    ok("eval", run, "eval.episodes=6", *overrides)
    (path,) = set((run / "eval").glob("*.json")) - before
    return json.loads(path.read_text())


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


def test_eval_ways_refused_with_the_finetune_recipe(protonet_run: Path) -> None:
    result = invoke("eval", protonet_run, "eval.ways=2", "eval.finetune=true")
    assert_user_error(result, 2, "eval.ways = 2", "eval.finetune")
