"""Shipped presets (`metafew configs`, `--config NAME`) and several --config files composed left
to right."""

from __future__ import annotations

from pathlib import Path

import yaml
from helpers import REPO, assert_user_error, invoke, ok

from metafew.config_load import load_config, read_yaml_file
from metafew.presets import PRESETS_DIR, first_sentence, resolve, shipped


def test_every_repository_config_is_shipped_in_the_package() -> None:
    repo = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
    assert repo == sorted(p.name for p in PRESETS_DIR.glob("*.yaml")) and len(repo) >= 10
    for path in shipped().values():
        load_config(path, ["data.root=data"])  # every preset is a valid config


def test_a_preset_resolves_by_name_and_by_its_repository_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # outside the clone: configs/... does not exist here
    assert resolve("maml_5w5s") == resolve("configs/maml_5w5s.yaml") == PRESETS_DIR / "maml_5w5s.yaml"
    assert resolve("omniglot_5w1s.yaml") == PRESETS_DIR / "omniglot_5w1s.yaml"
    local = tmp_path / "maml_5w5s.yaml"
    local.write_text("task: {shots: 1}\n")
    assert resolve("maml_5w5s.yaml") == Path("maml_5w5s.yaml")  # an existing file wins
    assert load_config("maml_5w5s.yaml").task.shots == 1


def test_unknown_names_and_paths_are_one_line(tmp_path: Path) -> None:
    assert_user_error(invoke("config", "-c", "mam_5w5s"), 2, "'mam_5w5s' not found", "maml_5w5s")
    assert_user_error(invoke("config", "-c", tmp_path / "x.yaml"), 2, "not found", "check the path")


def test_several_configs_compose_left_to_right_key_by_key(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("task: {ways: 3, shots: 2}\ntrain: {iterations: 7}\n")
    b.write_text("task: {shots: 4}\n")
    cfg = load_config([a, b], ["train.iterations=9"])
    assert (cfg.task.ways, cfg.task.shots, cfg.train.iterations) == (3, 4, 9)
    printed = yaml.safe_load(ok("config", "-c", "maml_5w5s", "-c", b).stdout)
    preset = read_yaml_file(PRESETS_DIR / "maml_5w5s.yaml")
    assert printed["task"]["shots"] == 4 and printed["task"]["queries"] == preset["task"]["queries"]


def test_configs_list_and_cp(tmp_path: Path) -> None:
    listed = ok("configs", "list").stdout.splitlines()
    names = [line.split("\t")[0] for line in listed if "\t" in line]
    assert names == list(shipped())
    ok("configs", "cp", "fashion_seed", tmp_path)
    assert (tmp_path / "fashion_seed.yaml").read_text() == (PRESETS_DIR / "fashion_seed.yaml").read_text()
    assert_user_error(invoke("configs", "cp", "fashion_seed", tmp_path), 2, "exists", "--force")
    ok("configs", "cp", "maml_5w5s", tmp_path / "fashion_seed.yaml", "--force")
    assert "maml" in (tmp_path / "fashion_seed.yaml").read_text()
    assert_user_error(invoke("configs", "cp", "nope", tmp_path), 2, "nope")
    assert_user_error(invoke("configs", "cp", "maml_5w5s", tmp_path / "no" / "x.yaml"), 2, "does not exist")


def test_first_sentence_keeps_abbreviations() -> None:
    assert first_sentence("Baseline (Chen et al. 2019): a, e.g. b. Then more.") == (
        "Baseline (Chen et al. 2019): a, e.g. b."
    )
    assert first_sentence("no full stop") == "no full stop"
