"""The registries own the names, the runtime section, capabilities instead of type checks, and the
launch decisions recorded in env.json."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from metafew.algorithms import ALGORITHMS, MAML, BatchedEvaluator, ProtoNet
from metafew.budget import eval_chunk_size, train_chunk_size
from metafew.config import AlgorithmConfig, Config, DataConfig, RuntimeConfig
from metafew.config_load import REGISTRIES, choices_of, dump_yaml, load_config, upgrade_saved
from metafew.data import DATASETS
from metafew.distributed import Solo
from metafew.errors import ConfigError
from metafew.launch import TrainRequest, prepare
from metafew.learner import build_learner
from metafew.models import build_model, make_forward
from metafew.runs import RunClaim, load_run_config
from metafew.system import resolve_device


def _meta(cls: type, name: str) -> dict:
    return dict(next(f for f in dataclasses.fields(cls) if f.name == name).metadata)


def test_config_choices_are_the_registry_keys() -> None:
    assert choices_of(_meta(AlgorithmConfig, "name")) == tuple(ALGORITHMS)
    assert choices_of(_meta(DataConfig, "dataset")) == tuple(DATASETS)
    assert REGISTRIES == {"algorithms": ALGORITHMS, "datasets": DATASETS}
    with pytest.raises(ConfigError) as info:
        load_config(None, ["algorithm.name=mam"])
    assert all(name in str(info.value) for name in ALGORITHMS) and "did you mean 'maml'" in str(info.value)


def test_a_registry_line_is_all_a_new_algorithm_needs_to_be_configurable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError, match=r"algorithm\.name"):
        load_config(None, ["algorithm.name=toy"])
    monkeypatch.setitem(ALGORITHMS, "toy", ALGORITHMS["maml"])
    assert load_config(None, ["algorithm.name=toy"]).algorithm.name == "toy"


def test_each_dataset_declares_whether_it_needs_a_root(monkeypatch: pytest.MonkeyPatch) -> None:
    needing = sorted(name for name, dataset in DATASETS.items() if dataset.needs_root)
    assert needing == ["cifar-fs", "fc100", "folder", "mini-imagenet", "omniglot"]
    for name in needing:
        with pytest.raises(ConfigError, match=rf"data\.root is required when data\.dataset = {name}"):
            load_config(None, [f"data.dataset={name}"])
    monkeypatch.setitem(DATASETS, "folder", dataclasses.replace(DATASETS["folder"], needs_root=False))
    assert load_config(None, ["data.dataset=folder"]).data.root is None


@pytest.mark.parametrize("key", [f.name for f in dataclasses.fields(RuntimeConfig)])
def test_runtime_keys_under_train_are_refused_with_the_new_key(key: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"'train\.{key}' moved to 'runtime\.{key}'"):
        load_config(None, [f"train.{key}=1"])
    path = tmp_path / "old.yaml"
    path.write_text(f"train:\n  {key}: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"runtime\.{key}"):
        load_config(path)


def test_saved_configs_of_older_runs_are_read_with_the_keys_moved(tmp_path: Path) -> None:
    old = {"train": {"iterations": 7, "device": "cpu", "threads": 2, "max_memory": 64}, "task": {"shots": 1}}
    assert upgrade_saved(old) == {
        "train": {"iterations": 7},
        "task": {"shots": 1},
        "runtime": {"device": "cpu", "threads": 2, "max_memory": 64},
    }
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(
        "train:\n  iterations: 7\n  device: cpu\n  batching: loop\n", encoding="utf-8"
    )
    cfg = load_run_config(run)
    assert (cfg.train.iterations, cfg.runtime.device, cfg.runtime.batching) == (7, "cpu", "loop")


def test_an_older_finetune_section_becomes_the_algorithms_adaptation(tmp_path: Path) -> None:
    old = {"train": {"iterations": 7}, "finetune": {"steps": 50, "lr": None}}
    assert upgrade_saved(old)["finetune"] == {"adapt_steps": 50, "adapt_lr": None}
    new = {"train": {}, "finetune": {"steps": 50, "optimizer": "sgd"}}
    assert upgrade_saved(new) == new  # a current section is left alone
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("train:\n  iterations: 7\nfinetune:\n  steps: null\n  lr: 0.2\n")
    cfg = load_run_config(run)
    assert (cfg.finetune.adapt_steps, cfg.finetune.adapt_lr, cfg.finetune.steps) == (None, 0.2, 100)


def test_batched_evaluation_is_a_declared_capability(tiny_cfg: Config) -> None:
    linear = build_learner(tiny_cfg, resolve_device("cpu"), 5)
    assert isinstance(linear.algorithm, MAML) and isinstance(linear.algorithm, BatchedEvaluator)
    assert linear.batched_eval is linear.algorithm
    tiny_cfg.model.head = "cosine"  # no task-batched form: evaluation runs under vmap
    assert build_learner(tiny_cfg, resolve_device("cpu"), 5).batched_eval is None
    tiny_cfg.model.head, tiny_cfg.algorithm.name = "linear", "protonet"
    learner = build_learner(tiny_cfg, resolve_device("cpu"), 5)
    assert isinstance(learner.algorithm, ProtoNet) and not isinstance(learner.algorithm, BatchedEvaluator)
    assert learner.batched_eval is None


def test_backbone_declares_its_task_batched_form(tiny_cfg: Config) -> None:
    model = build_model(tiny_cfg.model, 1, 16, 3)
    assert make_forward(model).tasks is not None
    tiny_cfg.model.head = "cosine"
    assert make_forward(build_model(tiny_cfg.model, 1, 16, 3)).tasks is None


def test_env_json_records_the_placed_device_and_the_chunk_sizes(tiny_cfg: Config, tmp_path: Path) -> None:
    tiny_cfg.runtime.max_memory = 1  # a budget that binds: one task per call
    path = tmp_path / "tiny.yaml"
    path.write_text(dump_yaml(tiny_cfg), encoding="utf-8")
    notes: list[str] = []
    with RunClaim() as claim:
        launch = prepare(Solo(), TrainRequest(path, [], None, frozenset()), claim, notes.append)
    env = json.loads((launch.run / "env.json").read_text(encoding="utf-8"))
    model = build_model(tiny_cfg.model, 1, 16, 3)
    assert env["device"] == str(launch.learner.device) == "cpu" and env["processes"] == 1
    assert env["train_chunk_size"] == launch.learner.chunks.train == train_chunk_size(tiny_cfg, model) == 1
    assert env["eval_chunk_size"] == launch.learner.chunks.eval == eval_chunk_size(tiny_cfg, model, True)
    assert env["eval_vmap_chunk_size"] == eval_chunk_size(tiny_cfg, model, False)
    assert notes == []
    with RunClaim() as claim:
        again = prepare(Solo(), TrainRequest(None, [], str(launch.run), frozenset()), claim, notes.append)
    env = json.loads((again.run / "env.json").read_text(encoding="utf-8"))
    assert env["train_chunk_size"] == 1 and len(env["resumed"]) == 1
    assert env["resumed"][0]["device"] == "cpu" and env["resumed"][0]["train_chunk_size"] == 1
