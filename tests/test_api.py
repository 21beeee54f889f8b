"""The Python API (issue 14): `load_finetuned`'s module gives `metafew predict`'s probabilities,
per picture whatever the batch, for uint8 and float input alike, and refuses a wrong shape in one
line; train/finetune/predict/load_meta run the commands' code from Python; `import metafew`
stays free of torch."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_OVERRIDES, make_class_folder, ok, only_child, tiny_finetuned, write_image

import metafew
from metafew.checkpoints import load_finetuned as load_record
from metafew.checkpoints import load_meta as load_meta_record
from metafew.config_load import from_dict
from metafew.errors import ConfigError, DataError, RunError
from metafew.finetuning import Finetuned, predict_proba
from metafew.stages.common import learner_for
from metafew.stages.predict import model_config

CSV_TOLERANCE = 1e-6
"""predictions.csv rounds to 6 decimals (±5e-7), plus float32 rounding (~1e-7) of probabilities ≤ 1."""

FLOAT_TOLERANCE = 1e-6
"""Two float32 computations of the same probabilities in different batch shapes: a few ulps."""


def write_pictures(folder: Path) -> Path:
    """Seven gray pictures at the model's size and two larger RGB ones, which predict (and
    read_pictures) convert to gray and resize."""
    for i in range(7):
        write_image(folder / f"p{i}.png", size=16, seed=100 + i)
    for i in range(2):
        write_image(folder / f"rgb{i}.png", size=24, seed=200 + i, mode="RGB")
    return folder


def read_csv(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """predictions.csv -> (file names, class columns, probabilities [N, ways])."""
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    classes = [c.removeprefix("p_") for c in rows[0][3:]]
    return [r[0] for r in rows[1:]], classes, np.array([[float(p) for p in r[3:]] for r in rows[1:]])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny run (2 iterations), fine-tuned for 2 steps, with a prediction on write_pictures."""
    root = tmp_path_factory.mktemp("api")
    model = tiny_finetuned(root)
    ok("predict", model, write_pictures(root / "pictures"), "--set", "runtime.threads=1")
    return model


def pictures_of(model_dir: Path) -> Path:
    return model_dir.parents[3] / "pictures"


def test_load_finetuned_gives_predicts_probabilities(model_dir: Path) -> None:
    model = metafew.load_finetuned(model_dir)
    pictures = metafew.read_pictures(pictures_of(model_dir), model)
    names, classes, expected = read_csv(only_child(model_dir / "predict") / "predictions.csv")
    probs = model(pictures.images)
    assert pictures.names == names and model.classes == classes
    assert probs.shape == (9, 3) and probs.dtype == torch.float32
    np.testing.assert_allclose(probs.numpy(), expected, rtol=0, atol=CSV_TOLERANCE)
    assert probs.argmax(-1).tolist() == expected.argmax(-1).tolist()
    record = load_record(model_dir)  # and predict's own function, unrounded
    learner = learner_for(model_config(record, []), record.train_classes)
    reference = predict_proba(learner, Finetuned.from_record(record, learner.device), pictures.images)
    torch.testing.assert_close(probs, reference, rtol=0, atol=FLOAT_TOLERANCE)


def test_the_module_is_an_inference_module_with_its_classes(model_dir: Path) -> None:
    model = metafew.load_finetuned(model_dir)
    info = json.loads((model_dir / "finetune.json").read_text())
    assert model.classes == info["classes"] and (model.channels, model.image_size) == (1, 16)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    probs = model(torch.rand(4, 1, 16, 16))
    assert not probs.requires_grad
    torch.testing.assert_close(probs.sum(-1), torch.ones(4))


def test_a_picture_alone_gets_what_it_gets_in_a_batch(model_dir: Path) -> None:
    model = metafew.load_finetuned(model_dir)
    x = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    batch = model(x)
    for i in range(len(x)):
        torch.testing.assert_close(model(x[i : i + 1])[0], batch[i], rtol=0, atol=FLOAT_TOLERANCE)
    torch.testing.assert_close(model(x[:3])[1], model(torch.cat([x[1:2], x[4:]]))[0], rtol=0, atol=1e-6)


def test_uint8_pictures_are_the_floats_over_255(model_dir: Path) -> None:
    model = metafew.load_finetuned(model_dir)
    pixels = torch.randint(
        0, 256, (5, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(model(pixels), model(pixels.float() / 255))
    assert torch.equal(model(pixels.double() / 255), model((pixels.double() / 255).float()))


@pytest.mark.parametrize(
    "shape",
    [(2, 3, 16, 16), (2, 4, 16, 16), (2, 1, 20, 20), (2, 1, 16, 8), (1, 16, 16)],
    ids=["rgb", "4-channels", "larger", "not-square", "no-batch-dim"],
)
def test_a_wrong_shape_is_refused_in_one_line(model_dir: Path, shape: tuple[int, ...]) -> None:
    model = metafew.load_finetuned(model_dir)
    with pytest.raises(DataError) as caught:
        model(torch.zeros(shape))
    message = str(caught.value)
    assert f"shape {list(shape)}" in message and "[N, 1, 16, 16]" in message
    assert "read_pictures" in message and "\n" not in message


def test_a_folder_without_a_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="not found"):
        metafew.load_finetuned(tmp_path)


def test_load_meta_gives_the_checkpoints_model_and_leaves_the_random_streams(model_dir: Path) -> None:
    run = model_dir.parents[1]
    state = torch.get_rng_state()
    meta = metafew.load_meta(run, "last", ["runtime.threads=1"])
    assert torch.equal(torch.get_rng_state(), state)
    saved = load_meta_record(run / "checkpoints" / "last.pt")
    assert meta.iteration == saved.iteration == 2 and meta.checkpoint == "last" and meta.run == run
    assert meta.cfg.task.ways == 3 and meta.splits is not None and len(meta.splits["novel"]) == 3
    weights = dict(meta.model.named_parameters())
    for key, value in saved.params.items():
        assert torch.equal(meta.learner.params[key].detach(), value)
        if key in weights:
            assert weights[key] is meta.learner.params[key]
    assert meta.model(torch.rand(4, 1, 16, 16)).shape == (4, 3)
    with pytest.raises(ConfigError, match="runtime"):
        metafew.load_meta(run, overrides=["finetune.steps=3"])


def test_train_finetune_predict_from_python(tmp_path: Path) -> None:
    raw = {**TINY_OVERRIDES, "train": {**TINY_OVERRIDES["train"], "runs_dir": str(tmp_path / "runs")}}
    seen: list[int] = []
    run = metafew.train(
        from_dict(raw),
        ["train.iterations=2", "runtime.threads=1"],
        progress=lambda done, *_: seen.append(done),
    )
    assert run.parent == tmp_path / "runs" and (run / "checkpoints" / "best.pt").is_file()
    assert seen[-1] == 2 and metafew.load_meta(run).iteration == 2
    labeled = make_class_folder(tmp_path / "labeled", {"a": 3, "b": 3, "c": 3}, size=16)
    model_dir = metafew.finetune(run, labeled, ["finetune.steps=1", "runtime.threads=1"])
    assert model_dir.parent == run / "finetune"
    result = metafew.predict(model_dir, write_pictures(tmp_path / "pictures"), ["runtime.threads=1"])
    _, classes, expected = read_csv(result.csv)
    assert result.pictures == 9 and classes == ["a", "b", "c"]
    model = metafew.load_finetuned(model_dir)
    probs = model(metafew.read_pictures(tmp_path / "pictures", model).images)
    np.testing.assert_allclose(probs.numpy(), expected, rtol=0, atol=CSV_TOLERANCE)
    with pytest.raises(ConfigError, match="Config object"):
        metafew.train(from_dict(raw), resume=run)


def test_import_metafew_stays_free_of_torch_until_the_api_is_used() -> None:
    code = (
        "import sys, metafew\n"
        "before = 'torch' in sys.modules\n"
        "assert 'load_finetuned' in dir(metafew)\n"
        "metafew.load_finetuned\n"
        "print(before, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        metafew.nothing  # noqa: B018
