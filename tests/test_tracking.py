"""logging.tensorboard: the event files a run writes, read back with the tensorboard package's
own reader, agree with metrics.jsonl, also across a resume."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from helpers import assert_user_error, invoke, ok, only_child, read_metrics, tiny

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install tensorboard)")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from metafew.config_load import load_config
from metafew.tracking import flat_hparams


def events(run: Path) -> EventAccumulator:
    reader = EventAccumulator(str(run / "tensorboard"))
    reader.Reload()
    return reader


def test_scalars_mirror_metrics_jsonl(tmp_path: Path) -> None:
    ok("train", *tiny(tmp_path, "logging.tensorboard=true", "train.val_every=2"))
    run = only_child(tmp_path)
    metrics, reader = read_metrics(run), events(run)
    train = [r for r in metrics if "loss" in r]
    val = [r for r in metrics if "val_accuracy" in r]
    loss = reader.Scalars("train/loss")
    assert [e.step for e in loss] == [r["iteration"] for r in train]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in train], rel=1e-6)
    accuracy = reader.Scalars("val/accuracy")
    assert [(e.step, e.value) for e in accuracy] == [
        (r["iteration"], pytest.approx(r["val_accuracy"], rel=1e-6)) for r in val
    ]
    assert {"train/accuracy", "train/lr", "train/tasks_per_s", "val/ci95"} <= set(reader.Tags()["scalars"])


def test_a_finished_run_records_its_hyper_parameters(tmp_path: Path) -> None:
    ok("train", *tiny(tmp_path, "logging.tensorboard=true"))
    run = only_child(tmp_path)
    files = list((run / "tensorboard").rglob("events.out.tfevents.*"))
    plugin = [e for f in files for e in _raw_events(f) if "_hparams_/session_start_info" in e]
    assert plugin, "no hparams session in the event files"
    cfg = load_config(None, tiny(tmp_path, "logging.tensorboard=true"))
    assert flat_hparams(cfg)["task.ways"] == cfg.task.ways and flat_hparams(cfg)["data.root"] == "null"


def _raw_events(path: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return [str(event) for event in EventFileLoader(str(path)).Load()]


def test_resume_drops_what_was_logged_past_the_checkpoint(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    ok("train", *tiny(tmp_path, "logging.tensorboard=true", "train.iterations=2"))
    run = only_child(tmp_path)
    # a process stopped after logging iteration 3 but before checkpointing it
    stray = SummaryWriter(log_dir=str(run / "tensorboard"))
    stray.add_scalar("train/loss", 999.0, 3)
    stray.close()
    ok("train", "--resume", run, "train.iterations=4")
    logged = [r for r in read_metrics(run) if "loss" in r]
    loss = events(run).Scalars("train/loss")
    assert [e.step for e in loss] == [r["iteration"] for r in logged] == [1, 2, 3, 4]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in logged], rel=1e-6)


def test_missing_package_is_one_line_before_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a)
    )
    result = invoke("train", *tiny(tmp_path / "runs", "logging.tensorboard=true"))
    assert_user_error(result, 2, "logging.tensorboard", "pip install")
    assert not (tmp_path / "runs").exists()
