"""metafew.runs: run folders, environment record, metrics log, checkpoints and run listing."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import metafew
from metafew import runs
from metafew.checkpoints import FORMAT as CHECKPOINT_FORMAT
from metafew.checkpoints import (
    MetaCheckpoint,
    load_checkpoint,
    load_meta,
    load_resume_checkpoint,
    previous_checkpoint,
    save,
    save_checkpoint,
)
from metafew.config import Config
from metafew.config_load import from_dict, load_config, parse_yaml, to_dict
from metafew.errors import RunError
from metafew.files import write_json
from metafew.runs import (
    RunClaim,
    append_metrics,
    config_diff,
    create_run,
    discard_partial_writes,
    find_resumable,
    load_run_config,
    new_file,
    new_folder,
    read_metrics,
    resolve_run,
    truncate_metrics,
)
from metafew.runs_table import list_runs, summarize_run

FOLDER = re.compile(r"^(\d{8})-(\d{6})-(.+)-([0-9a-f]{6})$")
STAMP = "20240102-030405"


def leftovers(folder: Path) -> list[str]:
    """Temporary files that an atomic write would leave behind."""
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith("."))


# ---------------------------------------------------------------------------------------------
# folders


def test_new_folder_name_format(tmp_path: Path) -> None:
    before = time.strftime("%Y%m%d-%H%M%S")
    folder = new_folder(tmp_path / "runs", "exp1")
    after = time.strftime("%Y%m%d-%H%M%S")
    assert folder.is_dir() and folder.parent == tmp_path / "runs"
    match = FOLDER.match(folder.name)
    assert match, folder.name
    assert match.group(3) == "exp1"
    assert before <= f"{match.group(1)}-{match.group(2)}" <= after
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("my run", "my_run"),
        ("a/b\\c", "a_b_c"),
        ("lr=0.1 shots:5", "lr_0.1_shots_5"),
        ("α-β", "-"),
        ("../../escape", "escape"),
        ("keep_this-1.0", "keep_this-1.0"),
    ],
)
def test_unsafe_characters_are_replaced(tmp_path: Path, name: str, label: str) -> None:
    parent = tmp_path / "runs"
    folder = new_folder(parent, name)
    assert folder.parent == parent
    assert [p.name for p in parent.iterdir()] == [folder.name]
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", folder.name)
    assert FOLDER.match(folder.name).group(3) == label


def test_empty_or_all_unsafe_name_gives_stamp_and_id(tmp_path: Path) -> None:
    for name in ("", "///", "..."):
        folder = new_folder(tmp_path, name)
        assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", folder.name), folder.name


def test_new_folder_retries_when_the_name_is_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = iter(["aaaaaa", "aaaaaa", "aaaaaa", "bbbbbb"])
    monkeypatch.setattr(runs, "_stamp", lambda: STAMP)
    monkeypatch.setattr(runs.secrets, "token_hex", lambda n: next(tokens))
    first = new_folder(tmp_path, "x")
    second = new_folder(tmp_path, "x")
    assert first.name == f"{STAMP}-x-aaaaaa"
    assert second.name == f"{STAMP}-x-bbbbbb"


def test_new_folder_gives_up_after_many_collisions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runs, "_stamp", lambda: STAMP)
    monkeypatch.setattr(runs.secrets, "token_hex", lambda n: "cccccc")
    new_folder(tmp_path, "x")
    with pytest.raises(RunError, match="could not find a free folder name") as info:
        new_folder(tmp_path, "x")
    assert info.value.exit_code == 4


def test_new_folder_under_a_file_is_a_run_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RunError, match="runs_dir") as info:
        new_folder(blocker / "runs", "x")
    assert str(blocker / "runs") in str(info.value)


def test_concurrent_threads_get_distinct_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runs, "_stamp", lambda: STAMP)  # all in the same second
    barrier = threading.Barrier(16)
    made: list[Path] = []
    lock = threading.Lock()

    def job() -> None:
        barrier.wait()
        folder = new_folder(tmp_path / "runs", "job")
        with lock:
            made.append(folder)

    threads = [threading.Thread(target=job) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 16 and len(set(made)) == 16
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(p.name for p in made)
    assert all(p.name.startswith(f"{STAMP}-job-") for p in made)


# 16 processes in the same second: tests/reliability/test_faults.py


def test_new_file_is_created_empty_and_unique(tmp_path: Path) -> None:
    paths = {new_file(tmp_path / "eval", ".json") for _ in range(10)}
    assert len(paths) == 10
    for path in paths:
        assert path.is_file() and path.stat().st_size == 0
        assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}\.json", path.name)


# ---------------------------------------------------------------------------------------------
# create_run


def test_create_run_writes_config_and_env(tiny_cfg: Config, tmp_path: Path) -> None:
    run = create_run(tiny_cfg, "cpu")
    assert run.parent == tmp_path / "runs"
    assert FOLDER.match(run.name).group(3) == tiny_cfg.train.name
    assert (run / "checkpoints").is_dir()
    text = (run / "config.yaml").read_text(encoding="utf-8")
    assert from_dict(parse_yaml(text, "config.yaml")) == tiny_cfg
    assert load_run_config(run) == tiny_cfg
    env = json.loads((run / "env.json").read_text(encoding="utf-8"))
    assert {"torch", "python", "command", "device", "git_sha"} <= set(env)
    assert env["torch"] == torch.__version__
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["command"] == sys.argv
    assert env["device"] == "cpu"
    assert env["metafew"] == metafew.__version__
    assert env["git_sha"] is None or re.fullmatch(r"[0-9a-f]{40}", env["git_sha"])
    assert env["git_dirty"] in (None, True, False) and (env["git_dirty"] is None) == (env["git_sha"] is None)
    assert env["packages"]["torch"] == torch.__version__ and "numpy" in env["packages"]
    assert leftovers(run) == []


def test_git_dirty_follows_uncommitted_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The flag reads `git status` of metafew's source folder: a scratch clone's changes show."""
    import subprocess

    import metafew.runs as runs_module

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    monkeypatch.setattr(runs_module, "__file__", str(tmp_path / "code.py"))
    assert runs_module._git_dirty() is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert runs_module._git_dirty() is True


def test_create_run_round_trips_a_changed_config(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            f"train.runs_dir={tmp_path / 'r'}",
            "train.name=my sweep/1",
            "train.outer_lr=1e-5",
            "algorithm.first_order=true",
            "finetune.adapt_steps=null",
            "finetune.lr=0.05",
            "data.channels=3",
        ],
    )
    run = create_run(cfg, "cpu")
    assert FOLDER.match(run.name).group(3) == "my_sweep_1"
    assert load_run_config(run) == cfg


def test_resolve_run(tiny_cfg: Config, tmp_path: Path) -> None:
    run = create_run(tiny_cfg, "cpu")
    assert resolve_run(run) == run
    assert resolve_run(str(run)) == run
    (tmp_path / "plain").mkdir()
    for bad in (tmp_path / "plain", tmp_path / "missing"):
        with pytest.raises(RunError, match="not a run folder") as info:
            resolve_run(bad)
        assert str(bad) in str(info.value)
        assert info.value.exit_code == 4


def test_unusable_run_config_is_a_run_error(tiny_cfg: Config) -> None:
    run = create_run(tiny_cfg, "cpu")
    (run / "config.yaml").write_text("task:\n  ways: 1\n", encoding="utf-8")
    with pytest.raises(RunError, match=r"unusable config\.yaml") as info:
        load_run_config(run)
    assert "task.ways" in str(info.value) and str(run) in str(info.value)


# ---------------------------------------------------------------------------------------------
# metrics


def test_metrics_append_and_read(tmp_path: Path) -> None:
    assert read_metrics(tmp_path) == []
    records = [{"iteration": i, "loss": 1.0 / (i + 1)} for i in range(1, 4)]
    for record in records:
        append_metrics(tmp_path, record)
    assert read_metrics(tmp_path) == records
    lines = (tmp_path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == records


def test_torn_last_line_is_ignored(tmp_path: Path) -> None:
    append_metrics(tmp_path, {"iteration": 1, "loss": 0.5})
    append_metrics(tmp_path, {"iteration": 2, "loss": 0.4})
    with (tmp_path / "metrics.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('{"iteration": 3, "lo')
    assert read_metrics(tmp_path) == [{"iteration": 1, "loss": 0.5}, {"iteration": 2, "loss": 0.4}]


def test_truncate_metrics(tmp_path: Path) -> None:
    for i in range(1, 6):
        append_metrics(tmp_path, {"iteration": i, "loss": float(i)})
    append_metrics(tmp_path, {"iteration": 3, "val_accuracy": 0.5})
    with (tmp_path / "metrics.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('{"iteration": 6, "lo')
    truncate_metrics(tmp_path, 3)
    assert read_metrics(tmp_path) == [
        {"iteration": 1, "loss": 1.0},
        {"iteration": 2, "loss": 2.0},
        {"iteration": 3, "loss": 3.0},
        {"iteration": 3, "val_accuracy": 0.5},
    ]
    # the torn line is gone, so appending after a resume gives a readable line
    append_metrics(tmp_path, {"iteration": 4, "loss": 9.0})
    assert read_metrics(tmp_path)[-1] == {"iteration": 4, "loss": 9.0}
    assert leftovers(tmp_path) == []
    truncate_metrics(tmp_path, 0)
    assert read_metrics(tmp_path) == []


def test_write_json_is_atomic_and_pretty(tmp_path: Path) -> None:
    write_json(tmp_path / "x.json", {"a": [1, 2]})
    write_json(tmp_path / "x.json", {"b": 3})
    assert json.loads((tmp_path / "x.json").read_text()) == {"b": 3}
    assert (tmp_path / "x.json").read_text().endswith("}\n")
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# checkpoints


def state() -> dict:
    gen = torch.Generator().manual_seed(0)
    return {
        "iteration": 7,
        "model": {
            "conv.weight": torch.randn(4, 1, 3, 3, generator=gen),
            "bn.num_batches_tracked": torch.tensor(5),
        },
        "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-3}]},
        "rng": torch.Generator().manual_seed(1).get_state(),
        "best_val": 0.75,
    }


@pytest.fixture
def checkpoint(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "checkpoints" / "last.pt"
    path.parent.mkdir()
    save_checkpoint(path, state())
    yield path


def test_checkpoint_round_trip(checkpoint: Path) -> None:
    loaded = load_checkpoint(checkpoint)
    expected = state()
    assert loaded["format"] == CHECKPOINT_FORMAT
    assert loaded["metafew"] == metafew.__version__
    assert loaded["iteration"] == 7 and loaded["best_val"] == 0.75
    for key, tensor in expected["model"].items():
        assert torch.equal(loaded["model"][key], tensor)
    assert torch.equal(loaded["rng"], expected["rng"])
    assert loaded["optimizer"]["param_groups"] == [{"lr": 1e-3}]
    assert torch.equal(loaded["optimizer"]["state"][0]["step"], torch.tensor(3.0))


def test_save_leaves_no_temp_files_and_replaces(checkpoint: Path) -> None:
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["last.pt"]
    save_checkpoint(checkpoint, {"iteration": 8})
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["last.pt"]
    assert load_checkpoint(checkpoint)["iteration"] == 8
    assert "model" not in load_checkpoint(checkpoint)


def test_save_into_a_missing_folder_is_a_run_error(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "last.pt"
    with pytest.raises(RunError, match="cannot write checkpoint") as info:
        save_checkpoint(path, {"iteration": 1})
    assert str(path) in str(info.value)
    assert not (tmp_path / "nope").exists()


def test_keep_previous_rotates_last_into_last_prev(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"iteration": 1}, keep_previous=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    save_checkpoint(path, {"iteration": 2}, keep_previous=True)
    save_checkpoint(path, {"iteration": 3}, keep_previous=True)
    assert previous_checkpoint(path) == tmp_path / "last.prev.pt"
    assert load_checkpoint(path)["iteration"] == 3
    assert load_checkpoint(tmp_path / "last.prev.pt")["iteration"] == 2
    save_checkpoint(tmp_path / "best.pt", {"iteration": 3})
    save_checkpoint(tmp_path / "best.pt", {"iteration": 4})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.prev.pt", "last.pt"]


def test_failed_write_keeps_both_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"iteration": 1}, keep_previous=True)
    save_checkpoint(path, {"iteration": 2}, keep_previous=True)

    def full(*args: object, **kwargs: object) -> None:
        raise RuntimeError(
            "[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file"
        )

    monkeypatch.setattr(runs.torch, "save", full)
    with pytest.raises(RunError, match=r"cannot write checkpoint .*PytorchStreamWriter failed") as info:
        save_checkpoint(path, {"iteration": 3}, keep_previous=True)
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.prev.pt", "last.pt"]
    assert [load_checkpoint(tmp_path / n)["iteration"] for n in ("last.pt", "last.prev.pt")] == [2, 1]


def test_a_full_disk_under_torch_save_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def save(*args: object, **kwargs: object) -> None:
        try:  # what torch.save does when the file's write fails
            raise OSError(28, "No space left on device")
        except OSError:
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"
            ) from None

    monkeypatch.setattr(runs.torch, "save", save)
    with pytest.raises(RunError, match="No space left on device; free disk space"):
        save_checkpoint(tmp_path / "last.pt", {"iteration": 1})


def test_disk_errors_of_small_files_are_run_errors(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    with pytest.raises(RunError, match="cannot write") as info:
        write_json(missing / "x.json", {})
    assert str(missing / "x.json") in str(info.value)
    with pytest.raises(RunError, match=r"metrics\.jsonl"):
        append_metrics(missing, {"iteration": 1})


def meta_run(cfg: Config, *iterations: int) -> Path:
    """A run folder with one last.pt per given iteration (the last one stays last.pt)."""
    run = create_run(cfg, "cpu")
    for it in iterations:
        record = MetaCheckpoint(it, None, 0, {}, 5, {}, {"torch": torch.get_rng_state()}, to_dict(cfg))
        save(run / "checkpoints" / "last.pt", record, keep_previous=True)
    return run


def test_load_resume_checkpoint(tiny_cfg: Config) -> None:
    run = meta_run(tiny_cfg, 2, 4)
    state, note = load_resume_checkpoint(run)
    assert (
        note is None
        and state is not None
        and state.iteration == 4 == load_meta(run / "checkpoints" / "last.pt").iteration
    )
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    state, note = load_resume_checkpoint(run)
    assert state is not None and state.iteration == 2
    assert note is not None and "\n" not in note
    assert note.startswith(f"checkpoint {str(run / 'checkpoints' / 'last.pt')!r} is corrupt")
    assert note.endswith("falling back to the previous checkpoint last.prev.pt (iteration 2)")
    fresh = create_run(tiny_cfg, "cpu")
    state, note = load_resume_checkpoint(fresh)
    assert state is None and note is not None and "starting it over from iteration 0" in note


def test_discard_partial_writes(tiny_cfg: Config) -> None:
    run = meta_run(tiny_cfg, 2)
    partial = [run / "checkpoints" / ".last.pt.0123abcd.tmp", run / ".metrics.jsonl.89abcdef.tmp"]
    for path in partial:
        path.write_bytes(b"half")
    assert sorted(discard_partial_writes(run)) == sorted(partial)
    assert leftovers(run) == []
    assert load_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == 2


def test_config_diff_lists_dotted_changes() -> None:
    a = {"task": {"ways": 5, "shots": 1}, "train": {"seed": 0}}
    b = {"task": {"ways": 5, "shots": 5}, "train": {"seed": 1}}
    assert config_diff(a, b) == [("task.shots", 1, 5), ("train.seed", 0, 1)]
    assert config_diff(a, a) == []


def test_run_claim_is_exclusive_and_released(tiny_cfg: Config) -> None:
    run = create_run(tiny_cfg, "cpu")
    with RunClaim() as first:
        first.acquire(run)
        with pytest.raises(RunError, match="being trained by another process") as info:
            RunClaim().acquire(run)
        assert str(run) in str(info.value) and info.value.exit_code == 4
    with RunClaim() as again:
        again.acquire(run)  # released on exit


def test_create_run_with_a_claim_holds_it_before_config_exists(tiny_cfg: Config) -> None:
    with RunClaim() as claim:
        run = create_run(tiny_cfg, "cpu", claim)
        with pytest.raises(RunError, match="another process"):
            RunClaim().acquire(run)


def test_find_resumable_picks_the_newest_unfinished_run_with_the_same_config(
    tiny_cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    stamps = iter(f"20240101-00000{i}" for i in range(10))
    monkeypatch.setattr(runs, "_stamp", lambda: next(stamps))
    assert find_resumable(tiny_cfg) is None  # no runs folder yet
    older = meta_run(tiny_cfg, 2)
    newer = meta_run(tiny_cfg, 2)
    finished = meta_run(tiny_cfg, 2, 4)  # train.iterations = 4
    other = from_dict({**to_dict(tiny_cfg), "task": {**to_dict(tiny_cfg)["task"], "shots": 1}})
    meta_run(other, 2)  # another experiment
    assert find_resumable(tiny_cfg) == newer
    with RunClaim() as claim:
        claim.acquire(newer)  # being trained by another job
        assert find_resumable(tiny_cfg) == older
    longer = from_dict({**to_dict(tiny_cfg), "train": {**to_dict(tiny_cfg)["train"], "iterations": 8}})
    assert find_resumable(longer) == finished  # train.iterations may grow: unfinished again
    renamed = from_dict({**to_dict(tiny_cfg), "train": {**to_dict(tiny_cfg)["train"], "name": "other"}})
    assert find_resumable(renamed) is None


# corrupt, truncated, bit-flipped, foreign and malicious files: tests/reliability/test_checkpoints.py


# ---------------------------------------------------------------------------------------------
# listing


def make_run(cfg: Config, records: list[dict], evals: list[dict] | None = None) -> Path:
    run = create_run(cfg, "cpu")
    for record in records:
        append_metrics(run, record)
    for result in evals or []:
        write_json(new_file(run / "eval", ".json"), result)
    return run


def test_summarize_run(tiny_cfg: Config) -> None:
    run = make_run(
        tiny_cfg,
        [
            {"iteration": 1, "loss": 1.2},
            {"iteration": 2, "loss": 1.0},
            {"iteration": 2, "val_accuracy": 0.4, "val_ci95": 0.1},
            {"iteration": 4, "loss": 0.8},
            {"iteration": 4, "val_accuracy": 0.55, "val_ci95": 0.1},
        ],
        [{"accuracy": 0.6123, "ci95": 0.0456}],
    )
    summary = summarize_run(run)
    assert summary.path == run
    assert summary.dataset == "glyphs"
    assert summary.algorithm == "maml"
    assert summary.setting == "3-way 2-shot"
    # no checkpoint: nothing to resume from, whatever metrics.jsonl says (runs_table's tests
    # read the checkpointed iteration of real runs)
    assert summary.iteration == 0 and summary.iterations == 4 and summary.status == "new"
    assert summary.best_val == 0.55
    assert summary.test_text == "61.23 ± 4.56%"


def test_summarize_run_without_metrics_or_eval(tmp_path: Path) -> None:
    cfg = load_config(None, [f"train.runs_dir={tmp_path}", "algorithm.first_order=true", "task.shots=1"])
    summary = summarize_run(make_run(cfg, []))
    assert summary.algorithm == "maml" and summary.first_order
    assert summary.setting == "5-way 1-shot"
    assert summary.iteration == 0 and summary.iterations == 300
    assert summary.best_val is None and summary.test is None


def test_summarize_run_ignores_a_broken_eval(tiny_cfg: Config) -> None:
    run = make_run(tiny_cfg, [{"iteration": 1, "loss": 1.0}])
    (run / "eval").mkdir()
    (run / "eval" / "20990101-000000-ffffff.json").write_text("{broken")
    assert summarize_run(run).test is None


def test_list_runs(tiny_cfg: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs_dir = tmp_path / "runs"
    assert list_runs(runs_dir) == []
    stamps = iter(["20240101-000000", "20240101-000001", "20240101-000002"])
    monkeypatch.setattr(runs, "_stamp", lambda: next(stamps))
    first = make_run(tiny_cfg, [{"iteration": 2, "val_accuracy": 0.3}])
    broken = make_run(tiny_cfg, [])
    (broken / "config.yaml").write_text("task: [", encoding="utf-8")
    third = make_run(tiny_cfg, [{"iteration": 3, "loss": 0.1}])
    (runs_dir / "not_a_run").mkdir()
    (runs_dir / "stray.txt").write_text("x")
    rows = list_runs(runs_dir)
    assert [r.path for r in rows] == [first, broken, third]
    assert [r.status for r in rows] == ["new", "unreadable", "new"]
    assert rows[0].best_val == 0.3 and "config.yaml" in rows[1].note
    assert list_runs(tmp_path / "absent") == []


def test_list_runs_oldest_first_within_a_second(
    tiny_cfg: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = iter(["ffffff", "000000"])
    real = runs.secrets.token_hex
    monkeypatch.setattr(runs, "_stamp", lambda: STAMP)
    monkeypatch.setattr(runs.secrets, "token_hex", lambda n: next(tokens) if n == 3 else real(n))
    older = create_run(tiny_cfg, "cpu")
    newer = create_run(tiny_cfg, "cpu")
    assert [r.path for r in list_runs(tmp_path / "runs")] == [older, newer]
