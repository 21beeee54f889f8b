"""benchmarks/time_to_accuracy.py: its pure parts (the limits, the resume decision, the table and
results.json round trip, the figure, --jobs); the subprocess parts are covered by its smoke run."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from helpers import load_benchmark
from PIL import Image

tta = load_benchmark("time_to_accuracy")


def test_schedule_sorts_scales_and_rejects_nonsense() -> None:
    assert tta.schedule("5,15,30,60", 1.0) == [5.0, 15.0, 30.0, 60.0]
    assert tta.schedule("60, 5,15,15", 0.02) == [0.1, 0.3, 1.2]
    for minutes, scale in (("", 1.0), ("0,5", 1.0), ("5", 0.0), ("-1", 1.0)):
        with pytest.raises(ValueError):
            tta.schedule(minutes, scale)


def test_format_minutes_is_what_the_command_line_gets() -> None:
    assert [tta.format_minutes(v) for v in (5.0, 0.3, 1.2, 60.0)] == ["5", "0.3", "1.2", "60"]


@pytest.mark.parametrize(
    ("exists", "done", "limit", "action"),
    [
        (False, None, 5, "start"),
        (True, None, 5, "resume"),  # a stage cut short (killed), or never trained
        (True, {"reason": "time_limit", "elapsed_s": 301.2}, 5, "eval"),
        (True, {"reason": "time_limit", "elapsed_s": 301.2}, 15, "resume"),  # the next, larger limit
        (True, {"reason": "time_limit", "elapsed_s": 900.0}, 15, "eval"),  # exactly at the limit
        (True, {"reason": "early_stopping", "elapsed_s": 120.0}, 60, "eval"),  # ended by itself
        (True, {"reason": "iterations", "elapsed_s": 10.0}, 60, "eval"),
    ],
)
def test_next_action(exists: bool, done: dict | None, limit: float, action: str) -> None:
    assert tta.next_action(exists, done, limit) == action


def test_legend_label_names_the_algorithm() -> None:
    assert tta.legend_label("omniglot_mamlpp_20w1s") == "MAML++"
    assert tta.legend_label("omniglot_baselinepp_5w1s") == "Baseline++"
    assert tta.legend_label("maml_5w5s_long") == "maml_5w5s_long"  # not a recipe name: as it is


def _fake_recipes() -> list:
    p = tta.Point
    maml = tta.Recipe(
        "omniglot_maml_5w1s",
        "configs/omniglot_maml_5w1s.yaml",
        "runs/x",
        "5-way 1-shot",
        [
            p(5, 5.02, 410, "time_limit", 0.7512, 0.0091, "a.json"),
            p(15, 15.1, 1222, "time_limit", 0.8, 0.008, "b.json"),
        ],
    )
    proto = tta.Recipe(
        "omniglot_protonet_20w1s",
        "configs/omniglot_protonet_20w1s.yaml",
        "runs/y",
        "20-way 1-shot",
        [p(5, 3.5, 900, "early_stopping", 0.6, 0.01, "c.json")],
    )
    broken = tta.Recipe("omniglot_reptile_5w1s", "configs/r.yaml", error="train exited 2: bad key")
    return [maml, proto, broken]


def test_table_from_a_fake_results_json(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"recipes": [asdict(r) for r in _fake_recipes()]}), encoding="utf-8")
    recipes = list(tta.load_results(path).values())
    assert recipes == _fake_recipes()  # the round trip keeps every field
    table = tta.format_table(recipes, [5.0, 15.0], episodes=600, seed=1234).splitlines()
    assert "600 seeded test episodes (eval.seed 1234" in table[0]
    assert table[2] == "| recipe | setting | 5 min | 15 min |"
    assert table[3] == "|---|---|---|---|"
    assert table[4] == (
        "| omniglot_maml_5w1s | 5-way 1-shot | 75.12 ± 0.91%<br>5.02 min, 410 it "
        "| 80.00 ± 0.80%<br>15.1 min, 1222 it |"
    )
    early = "60.00 ± 1.00%<br>3.50 min, 900 it, early stop"
    assert table[5] == f"| omniglot_protonet_20w1s | 20-way 1-shot | {early} | - |"
    assert table[6] == "| omniglot_reptile_5w1s |  | failed | failed |"
    assert table[-1] == "- omniglot_reptile_5w1s: train exited 2: bad key"


def test_load_results_without_a_file(tmp_path: Path) -> None:
    assert tta.load_results(tmp_path / "results.json") == {}


def test_figure_has_one_panel_per_setting(tmp_path: Path) -> None:
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    recipes = _fake_recipes()
    tta.plot_time_to_accuracy(recipes[:1], one, 600)
    tta.plot_time_to_accuracy(recipes, two, 600)
    assert Image.open(two).height > Image.open(one).height  # the 20-way panel below the 5-way one
    tta.plot_time_to_accuracy(recipes[2:], tmp_path / "none.png", 600)  # nothing measured: no file
    assert not (tmp_path / "none.png").exists()


def _timed_measure(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Replace measure (train + eval) by a 0.2 s sleep that records when each recipe starts and ends."""
    events: list[tuple[str, str]] = []
    lock = threading.Lock()

    def measure(recipe: tta.Recipe, limit: float, args: argparse.Namespace) -> tta.Point:
        with lock:
            events.append(("start", recipe.label))
        time.sleep(0.2)
        recipe.setting = "5-way 1-shot"
        with lock:
            events.append(("end", recipe.label))
        return tta.Point(limit, limit, 10, "time_limit", 0.5, 0.01, f"{recipe.label}.json")

    monkeypatch.setattr(tta, "measure", measure)
    return events


@pytest.mark.parametrize("jobs", [1, 2])
def test_jobs_trains_that_many_recipes_at_once_and_keeps_every_point(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, jobs: int
) -> None:
    events = _timed_measure(monkeypatch)
    args = tta.parse_args(["a.yaml", "b.yaml", "c.yaml", "--jobs", str(jobs), "--out", str(tmp_path)])
    recipes = [tta.Recipe(c.stem, str(c)) for c in args.configs]
    tta.run_recipes(recipes, [5.0, 15.0], recipes, args)
    saved = tta.load_results(tmp_path / "results.json")
    assert [(label, [p.limit_minutes for p in r.points]) for label, r in saved.items()] == [
        ("a", [5.0, 15.0]),
        ("b", [5.0, 15.0]),
        ("c", [5.0, 15.0]),
    ]
    if jobs == 1:  # one recipe after the other, each limit in order
        assert events == [(kind, r) for r in "abc" for _ in range(2) for kind in ("start", "end")]
    else:  # each stage sleeps 0.2 s: whatever the load, a and b have both started before either ends
        assert [kind for kind, _ in events[:2]] == ["start", "start"]
        assert {label for _, label in events[:2]} == {"a", "b"}


def test_jobs_below_one_is_refused(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        tta.parse_args(["a.yaml", "--jobs", "0"])
    assert exit_info.value.code == 2
    assert "--jobs 0: give 1 or more" in capsys.readouterr().err


def test_say_writes_each_line_whole(capsys: pytest.CaptureFixture) -> None:
    tta.say("a: training to 5 min, then eval")
    tta.say("b: bad", sys.stderr)
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("a: training to 5 min, then eval\n", "b: bad\n")
