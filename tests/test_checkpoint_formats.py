"""The checkpoint records (metafew/checkpoints.py): format 2 round trips, format 1 files written
by earlier metafew still load and resume exactly, and damaged records are refused in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from metafew import engine
from metafew.checkpoints import (
    FORMAT,
    FinetunedCheckpoint,
    MetaCheckpoint,
    load_checkpoint,
    load_finetuned,
    load_meta,
    save,
    save_checkpoint,
)
from metafew.config import Config
from metafew.config_load import to_dict
from metafew.data import load_data
from metafew.errors import RunError
from metafew.runs import create_run


def _format_1(state: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """A meta checkpoint as format 1 wrote it: unread `schedule` and `sampler` fields, and the
    runtime keys still under train: in its config."""
    config = to_dict(cfg)
    config["train"] |= config.pop("runtime")
    return {
        **state,
        "format": 1,
        "schedule": {"lr_schedule": "constant", "next_lr": 1e-3},
        "sampler": {"seed": cfg.train.seed, "next_episode": 4, "val_seed": cfg.train.seed + 1},
        "config": config,
    }


def test_meta_checkpoint_round_trips_in_format_2(tiny_cfg: Config) -> None:
    run = create_run(tiny_cfg, "cpu")
    engine.train(tiny_cfg, load_data(tiny_cfg.data), run)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    record = load_meta(run / "checkpoints" / "last.pt")
    assert state["format"] == FORMAT == 2 and state["kind"] == MetaCheckpoint.KIND
    assert record.iteration == 4 and record.config == to_dict(tiny_cfg) and record.train_classes == 5
    assert set(record.params) == set(state["params"])
    assert all(torch.equal(record.params[k], state["params"][k]) for k in record.params)


def test_a_format_1_checkpoint_resumes_exactly(tiny_cfg: Config) -> None:
    data = load_data(tiny_cfg.data)
    straight = create_run(tiny_cfg, "cpu")
    engine.train(tiny_cfg, data, straight)
    tiny_cfg.train.iterations = 2
    half = create_run(tiny_cfg, "cpu")
    engine.train(tiny_cfg, data, half)
    tiny_cfg.train.iterations = 4
    last = half / "checkpoints" / "last.pt"
    save_checkpoint(last, _format_1(load_checkpoint(last), tiny_cfg))
    assert load_checkpoint(last)["format"] == 1
    engine.train(tiny_cfg, data, half, resume=load_meta(last))
    a, b = load_meta(straight / "checkpoints" / "last.pt"), load_meta(last)
    assert a.iteration == b.iteration == 4
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)


def test_the_oldest_format_1_random_state_is_read(tiny_cfg: Config, tmp_path: Path) -> None:
    run = create_run(tiny_cfg, "cpu")
    engine.train(tiny_cfg, load_data(tiny_cfg.data), run)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    old = {k: v for k, v in _format_1(state, tiny_cfg).items() if k != "rng"}
    old["torch_rng"] = state["rng"]["torch"]
    save_checkpoint(tmp_path / "old.pt", old)
    record = load_meta(tmp_path / "old.pt")
    assert set(record.rng) == {"torch"} and torch.equal(record.rng["torch"], state["rng"]["torch"])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ({}, "no 'iteration' field"),
        ({"iteration": "7"}, "field 'iteration' holds str"),
        ({"iteration": True}, "field 'iteration' holds bool"),
        ({"params": [1, 2]}, "field 'params' holds list"),
        ({"kind": "finetuned"}, "holds a finetuned model"),
    ],
)
def test_damaged_records_are_refused_in_one_line(
    tiny_cfg: Config, tmp_path: Path, damage: dict[str, Any], message: str
) -> None:
    base = MetaCheckpoint(3, None, 0, {}, 5, {}, {"torch": torch.get_rng_state()}, to_dict(tiny_cfg))
    state = {} if not damage else {**base.to_state(), **damage}
    save_checkpoint(tmp_path / "bad.pt", state)
    with pytest.raises(RunError, match=message) as info:
        load_meta(tmp_path / "bad.pt")
    assert "\n" not in str(info.value) and str(tmp_path / "bad.pt") in str(info.value)


def test_unknown_formats_are_named(tmp_path: Path) -> None:
    torch.save({"format": 99, "kind": "meta"}, tmp_path / "future.pt")
    with pytest.raises(RunError, match=r"format 99; this metafew reads \(1, 2\)"):
        load_checkpoint(tmp_path / "future.pt")


def test_finetuned_checkpoint_round_trips(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    record = FinetunedCheckpoint(
        params={"head.weight": torch.randn(3, 4, generator=g)},
        stats=[(torch.randn(1, 4, 1, 1, generator=g), torch.rand(1, 4, 1, 1, generator=g))],
        classes=["a", "b", "c"],
        config={"task": {"ways": 3}},
        train_classes=7,
    )
    (tmp_path / "m").mkdir()
    save(tmp_path / "m" / "model.pt", record)
    back = load_finetuned(tmp_path / "m")
    assert back.classes == record.classes and back.train_classes == 7 and back.config == record.config
    assert torch.equal(back.params["head.weight"], record.params["head.weight"])
    assert all(
        torch.equal(x, y) for pair, other in zip(back.stats, record.stats) for x, y in zip(pair, other)
    )
    assert back.others == []
    meta = MetaCheckpoint(1, None, 0, {}, 5, {}, {"torch": torch.get_rng_state()}, {})
    save(tmp_path / "m" / "model.pt", meta)
    with pytest.raises(RunError, match="holds no fine-tuned model"):
        load_finetuned(tmp_path / "m")


def test_a_seed_ensemble_round_trips_and_older_files_have_one_member(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)

    def member() -> tuple[dict[str, torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
        stats = [(torch.randn(4, generator=g), torch.rand(4, generator=g))]
        return {"head.weight": torch.randn(3, 4, generator=g)}, stats

    first, *others = [member() for _ in range(3)]
    record = FinetunedCheckpoint(*first, ["a", "b", "c"], {"task": {"ways": 3}}, 7, others)
    (tmp_path / "m").mkdir()
    save(tmp_path / "m" / "model.pt", record)
    back = load_finetuned(tmp_path / "m")
    assert len(back.others) == 2
    for (params, stats), (want_params, want_stats) in zip(back.others, others):
        assert torch.equal(params["head.weight"], want_params["head.weight"])
        assert torch.equal(stats[0][0], want_stats[0][0]) and torch.equal(stats[0][1], want_stats[0][1])
    older = {k: v for k, v in record.to_state().items() if k != "others"}  # a file from before ensembles
    assert FinetunedCheckpoint.from_state(older, "old.pt").others == []
    damaged = {**record.to_state(), "others": [{"params": {}}]}
    with pytest.raises(RunError, match="no 'stats' field"):
        FinetunedCheckpoint.from_state(damaged, "damaged.pt")
