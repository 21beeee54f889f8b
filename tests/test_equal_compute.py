"""benchmarks/equal_compute.py: its one scoring function against `metafew eval`, the pictures and
tasks the learn2learn child gets, the child's network against metafew's Conv-4, and the table
and results.json. The child's training needs learn2learn (not in this venv): its smoke run covers it."""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import load_benchmark, ok, only_child, tiny

from metafew.checkpoints import load_meta
from metafew.config import Config
from metafew.config_load import load_config
from metafew.launch import load_run_data
from metafew.learner import build_learner

ec = load_benchmark("equal_compute")


def _recipe(*overrides: str) -> Config:
    """The shipped recipe (data.root only has to be set: nothing is read)."""
    return load_config(ec.RECIPE, ["data.root=omniglot", *overrides])


def _only_json(folder: Path) -> Path:
    files = list(folder.glob("*.json"))
    assert len(files) == 1, files
    return files[0]


def test_score_gives_what_metafew_eval_writes_for_the_last_checkpoint(tmp_path: Path) -> None:
    ok(
        "train",
        *tiny(tmp_path / "runs", "train.iterations=3", "algorithm.eval_inner_steps=1", "runtime.threads=1"),
    )
    run = only_child(tmp_path / "runs")
    ok("eval", run, "eval.checkpoint=last", "eval.episodes=6", "eval.seed=77", "runtime.threads=1")
    written = json.loads(_only_json(run / "eval").read_text(encoding="utf-8"))
    assert written["checkpoint"] == "last"
    cfg = ec.eval_config(run, 6, 77)
    saved = load_meta(run / "checkpoints" / "last.pt")
    got = ec.score(cfg, saved.params, saved.train_classes, load_run_data(cfg, run).novel)
    assert got.per_episode == written["per_episode"]
    assert (got.accuracy, got.ci95) == (written["accuracy"], written["ci95"])
    other = ec.score(
        ec.eval_config(run, 6, 78), saved.params, saved.train_classes, load_run_data(cfg, run).novel
    )
    assert other.per_episode != got.per_episode  # eval.seed picks the episodes


def test_exported_meta_train_is_the_rotated_omniglot_split(tmp_path: Path, omniglot_root: Path) -> None:
    cfg = _recipe(f"data.root={omniglot_root}")
    ec.export_meta_train(load_run_data(cfg), tmp_path / "meta_train.pt")
    saved = torch.load(tmp_path / "meta_train.pt", weights_only=True)
    images, labels, classes = saved["images"], saved["labels"], saved["classes"]
    assert images.dtype == torch.uint8 and images.shape == (456 * 20, 1, 28, 28)
    assert len(classes) == 456 and torch.bincount(labels).tolist() == [20] * 456  # 114 characters × 4
    assert {c.split("/")[0] for c in classes[:114]} == {"Balinese", "Greek", "Korean", "Latin"}
    assert classes[114 * 3 + 7] == f"{classes[7]}@rot270"
    torch.testing.assert_close(images[labels == 114 + 7], torch.rot90(images[labels == 7], 1, dims=(2, 3)))


def test_sample_task_draws_distinct_classes_and_disjoint_pictures() -> None:
    # picture i is filled with the value i, so the task's pictures name their indices
    labels = torch.arange(12).repeat_interleave(20)[:230]  # class 11 has 10 pictures: too few
    images = torch.arange(230, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    groups = ec.classes_by_index(labels, 16)
    assert len(groups) == 11
    spec = {"ways": 5, "shots": 1, "queries": 15}
    sx, sy, qx, qy = ec.sample_task(images, groups, spec, torch.Generator().manual_seed(3))
    assert sx.shape == (5, 1, 2, 2) and qx.shape == (75, 1, 2, 2)
    assert sy.tolist() == list(range(5)) and qy.tolist() == [k for k in range(5) for _ in range(15)]
    support = (sx[:, 0, 0, 0] * 255).round().long()
    query = (qx[:, 0, 0, 0] * 255).round().long()
    assert len(set(support.tolist()) | set(query.tolist())) == 80  # no picture twice
    assert len(set(labels[support].tolist())) == 5 and 11 not in labels[support].tolist()
    for k in range(5):  # every query of label k is of the class of support k
        assert (labels[query[qy == k]] == labels[support[k]]).all()


def test_peer_network_is_metafews_conv4_with_the_same_names() -> None:
    cfg = _recipe()
    init = ec.initial_weights(cfg, 456)
    peer = ec.PeerConv4(cfg.data.channels, cfg.data.image_size, cfg.task.ways, cfg.model.hidden, 4)
    assert {k: v.shape for k, v in peer.state_dict().items()} == {k: v.shape for k, v in init.items()}
    assert len(init) == 4 * 4 + 2
    peer.load_state_dict(init)
    learner = build_learner(cfg, torch.device("cpu"), 456)
    x = torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(peer(x), learner.forward(learner.params, x), rtol=1e-4, atol=1e-5)
    assert ec.initial_weights(cfg, 456)["head.weight"].equal(init["head.weight"])  # seeded
    other = ec.initial_weights(_recipe("train.seed=1"), 456)
    assert not other["head.weight"].equal(init["head.weight"])


def test_peer_spec_carries_the_recipe_and_refuses_what_the_child_lacks() -> None:
    paths = {"data": "d", "init": "i", "resume": None, "save": "s"}
    spec = ec.peer_spec(_recipe(), 2, 540.0, paths)
    expected = {"ways": 5, "shots": 1, "queries": 15, "inner_lr": 0.4, "inner_steps": 1}
    assert {k: spec[k] for k in expected} == expected
    assert (spec["first_order"], spec["outer_lr"], spec["meta_batch_size"]) == (False, 1e-3, 8)
    assert (spec["threads"], spec["limit_s"], spec["save"]) == (2, 540.0, "s")
    for override, key in [
        ("model.pool=max", "model.name/pool/head"),
        ("train.lr_schedule=cosine", "train.optimizer/lr_schedule"),
        ("algorithm.maml.multi_step_loss=true", "algorithm.maml.*"),
    ]:
        with pytest.raises(RuntimeError, match=key.replace("*", r"\*")):
            ec.peer_spec(_recipe(override), 2, 1.0, paths)


def _args(tmp_path: Path, **changes: object) -> argparse.Namespace:
    return argparse.Namespace(
        **{"episodes": 600, "seed": 1234, "threads": 2, "scale": 1.0, "together": False, "out": tmp_path}
        | changes
    )


def _points() -> list:
    p = ec.Point
    return [
        p("metafew", 15.0, 15.02, 2870, 25.47, 0.8012, 0.0091, "m15.pt"),
        p("learn2learn", 15.0, 15.003, 1400, 12.44, 0.7531, 0.0102, "l15.pt"),
        p("metafew", 60.0, 60.1, 11500, 25.51, 0.905, 0.007, "m60.pt"),
    ]


def test_results_json_round_trip_and_table(tmp_path: Path) -> None:
    args = _args(tmp_path)
    ec.save_results(_points(), args)
    assert ec.load_results(tmp_path / "results.json", ec.settings(args)) == _points()
    table = (tmp_path / "results.md").read_text(encoding="utf-8").splitlines()
    assert "2 CPU thread(s); accuracy of the last weights" in table[0]
    assert "600 seeded test episodes (eval.seed 1234)" in table[0] and "--scale" not in table[0]
    assert "--together" not in table[0]
    at_once = ec.format_table(_points(), ec.settings(_args(tmp_path, threads=1, together=True)))
    assert "on 1 CPU thread(s) each, both sides at once (--together); accuracy" in at_once
    assert table[2].startswith("| implementation | minutes limit | minutes trained | iterations |")
    assert table[4:] == [
        "| metafew | 15 | 15.0 | 2870 | 25.5 | 80.12 ± 0.91% |",
        "| learn2learn | 15 | 15.0 | 1400 | 12.4 | 75.31 ± 1.02% |",
        "| metafew | 60 | 60.1 | 11500 | 25.5 | 90.50 ± 0.70% |",
    ]
    scaled = ec.format_table(
        [ec.Point("metafew", 0.15, 0.1521, 30, 26.3, 0.5, 0.05, "w")],
        ec.settings(_args(tmp_path, scale=0.01)),
    )
    assert (
        "limits × 0.01 (--scale)" in scaled
        and "| metafew | 0.15 | 0.15 | 30 | 26.3 | 50.00 ± 5.00% |" in scaled
    )


def test_results_of_other_settings_are_refused(tmp_path: Path) -> None:
    ec.save_results(_points(), _args(tmp_path))
    assert ec.load_results(tmp_path / "nothing.json", ec.settings(_args(tmp_path))) == []
    with pytest.raises(RuntimeError, match="another --out"):
        ec.load_results(tmp_path / "results.json", ec.settings(_args(tmp_path, episodes=20)))


def test_next_limits_skips_measured_points_and_refuses_to_rewind() -> None:
    points = _points()
    assert ec.next_limits(points, "metafew", [15.0, 60.0]) == []
    assert ec.next_limits(points, "learn2learn", [15.0, 60.0, 120.0]) == [60.0, 120.0]
    assert ec.next_limits([], "learn2learn", [15.0]) == [15.0]
    with pytest.raises(RuntimeError, match="below the 60 min"):
        ec.next_limits(points, "metafew", [5.0, 15.0, 60.0])


def test_missing_peers_venv_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        ec.main(["--peers-python", str(tmp_path / "no-venv" / "python"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0] and "install_peers.sh" in err[0]
    assert not (tmp_path / "out").exists()  # nothing started


def test_trained_seconds_is_the_last_steps_line_not_the_validation_after_it() -> None:
    records = [
        {"iteration": 10, "loss": 1.5, "elapsed_s": 4.0},
        {"iteration": 24, "loss": 1.4, "elapsed_s": 9.07},
        {"iteration": 24, "val_accuracy": 0.44, "elapsed_s": 11.07},
    ]
    assert ec.trained_seconds(records, 24) == 9.07
    with pytest.raises(RuntimeError, match="iteration 30"):
        ec.trained_seconds(records, 30)


def _recording_sides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, str]]:
    """Replace both sides' training by 0.2 s sleeps that record when each begins and ends."""
    events: list[tuple[str, str]] = []
    lock = threading.Lock()

    def side(name: str) -> Path:
        with lock:
            events.append(("start", name))
        time.sleep(0.2)
        with lock:
            events.append(("end", name))
        return tmp_path / name

    monkeypatch.setattr(ec, "train_metafew", lambda limit, args: side("metafew"))
    monkeypatch.setattr(ec, "train_learn2learn", lambda limit, args, previous: side("learn2learn"))
    return events


def test_together_trains_both_sides_at_once_and_one_after_the_other_without(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    events = _recording_sides(monkeypatch, tmp_path)
    names = ["metafew", "learn2learn"]
    got = ec.train_sides(names, 15.0, _args(tmp_path, together=True), [])
    assert got == {"metafew": tmp_path / "metafew", "learn2learn": tmp_path / "learn2learn"}
    # each side sleeps 0.2 s: whatever the machine's load, both have started before either ends
    assert [kind for kind, _ in events[:2]] == ["start", "start"]
    events.clear()
    ec.train_sides(names, 15.0, _args(tmp_path), [])
    assert events == [
        ("start", "metafew"),
        ("end", "metafew"),
        ("start", "learn2learn"),
        ("end", "learn2learn"),
    ]


def test_results_of_the_other_layout_are_refused(tmp_path: Path) -> None:
    ec.save_results(_points(), _args(tmp_path))
    with pytest.raises(RuntimeError, match="another --out"):
        ec.load_results(tmp_path / "results.json", ec.settings(_args(tmp_path, together=True)))


def test_learn2learns_start_is_the_weights_metafews_run_starts_from(
    tmp_path: Path, omniglot_root: Path
) -> None:
    # --together builds learn2learn's initial weights from the recipe before metafew's run exists:
    # they must be the ones the run itself starts from (its config has the time limit and runs_dir too)
    args = argparse.Namespace(omniglot=omniglot_root, threads=1)
    sets = ec.recipe_sets(args)
    ok("train", "--config", ec.RECIPE, *sets, "train.iterations=1", f"train.runs_dir={tmp_path}")
    run = only_child(tmp_path)
    from_recipe = ec.initial_weights(load_config(ec.RECIPE, sets), 456)
    from_run = ec.initial_weights(ec.eval_config(run, 10, 0), 456)
    assert from_recipe.keys() == from_run.keys()
    assert all(from_recipe[k].equal(from_run[k]) for k in from_recipe)
