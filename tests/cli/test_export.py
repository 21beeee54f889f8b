"""`metafew export` (issue 14): the torchscript and exported-program files, loaded back with
torch alone, give `metafew predict`'s probabilities and carry their classes and input spec."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_user_error, invoke, ok, only_child, tiny_finetuned, write_image

import metafew
from metafew.export import SPEC_NAME

CSV_TOLERANCE = 1e-6
"""predictions.csv rounds to 6 decimals (±5e-7), plus float32 rounding (~1e-7) of probabilities ≤ 1."""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny run (2 iterations), fine-tuned for 2 steps, with a prediction on 6 pictures."""
    root = tmp_path_factory.mktemp("export")
    model = tiny_finetuned(root)
    for i in range(6):
        write_image(root / "pictures" / f"p{i}.png", size=16, seed=300 + i)
    ok("predict", model, root / "pictures", "--set", "runtime.threads=1")
    return model


def predicted(model_dir: Path) -> tuple[torch.Tensor, np.ndarray]:
    """The pictures predict labelled, decoded as it decodes them (uint8 [N, 1, 16, 16]), and its
    probabilities from predictions.csv [N, ways], rows in the same order."""
    model = metafew.load_finetuned(model_dir)
    pictures = metafew.read_pictures(model_dir.parents[3] / "pictures", model)
    with (only_child(model_dir / "predict") / "predictions.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    assert [r[0] for r in rows] == pictures.names
    return pictures.images, np.array([[float(p) for p in r[3:]] for r in rows])


def test_torchscript_file_gives_predicts_probabilities(model_dir: Path) -> None:
    result = ok("export", model_dir, "--format", "torchscript")
    path = model_dir / "export" / "classifier.ts.pt"
    assert f"exported: {path} (torchscript; pictures [N, 1, 16, 16] float32 or uint8" in result.stdout
    extra = {SPEC_NAME: ""}
    loaded = torch.jit.load(str(path), _extra_files=extra)
    images, expected = predicted(model_dir)
    probs = loaded(images)
    np.testing.assert_allclose(probs.numpy(), expected, rtol=0, atol=CSV_TOLERANCE)
    assert probs.argmax(-1).tolist() == expected.argmax(-1).tolist()
    torch.testing.assert_close(loaded(images.float() / 255), probs, rtol=0, atol=0)
    torch.testing.assert_close(loaded(images[2:3])[0], probs[2], rtol=0, atol=1e-6)
    classes = json.loads((model_dir / "finetune.json").read_text())["classes"]
    spec = json.loads((path.parent / "classifier.ts.pt.json").read_text())
    assert loaded.classes == spec["classes"] == classes and spec["file"] == path.name
    assert spec["input"]["shape"] == ["N", 1, 16, 16] and spec["input"]["dtype"] == ["float32", "uint8"]
    assert json.loads(extra[SPEC_NAME])["classes"] == classes
    with pytest.raises(torch.jit.Error, match=r"DataError: pictures of shape \[2, 3, 16, 16\]"):
        loaded(torch.zeros(2, 3, 16, 16))


def test_exported_program_file_gives_predicts_probabilities(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "deploy" / "glyphs.pt2"
    result = ok("export", model_dir, "--format", "exported-program", "--out", out)
    assert f"load: torch.export.load('{out}').module()" in result.stdout
    program = torch.export.load(out).module()
    images, expected = predicted(model_dir)
    probs = program(images.float() / 255)
    np.testing.assert_allclose(probs.numpy(), expected, rtol=0, atol=CSV_TOLERANCE)
    assert probs.argmax(-1).tolist() == expected.argmax(-1).tolist()
    torch.testing.assert_close(program(images[:1].float() / 255)[0], probs[0], rtol=0, atol=1e-6)
    spec = json.loads((tmp_path / "deploy" / "glyphs.pt2.json").read_text())
    assert spec["format"] == "exported-program" and spec["input"]["dtype"] == ["float32"]
    assert spec["classes"] == metafew.load_finetuned(model_dir).classes
    with pytest.raises(Exception, match=r"shape\[1\]|size\(\)\[1\]"):  # the program's own input guard
        program(torch.zeros(2, 3, 16, 16))


def test_a_seed_ensemble_is_one_model_whose_export_gives_predicts_probabilities(tmp_path: Path) -> None:
    model_dir = tiny_finetuned(tmp_path, "finetune.members=2", "finetune.holdout=0")
    assert len(json.loads((model_dir / "finetune.json").read_text())["member_steps"]) == 2
    for i in range(4):
        write_image(tmp_path / "pictures" / f"p{i}.png", size=16, seed=400 + i)
    ok("predict", model_dir, tmp_path / "pictures", "--set", "runtime.threads=1")
    ok("export", model_dir, "--format", "torchscript")
    loaded = torch.jit.load(str(model_dir / "export" / "classifier.ts.pt"))
    images, expected = predicted(model_dir)
    np.testing.assert_allclose(loaded(images).numpy(), expected, rtol=0, atol=CSV_TOLERANCE)
    members = metafew.load_finetuned(model_dir).core.members
    first = members[0](images.float() / 255)
    assert len(members) == 2 and not np.allclose(first.numpy(), expected, rtol=0, atol=1e-3)


def test_export_refuses_an_unknown_format_and_a_folder_without_a_model(
    model_dir: Path, tmp_path: Path
) -> None:
    assert_user_error(invoke("export", model_dir, "--format", "onnx"), 2, "--format 'onnx'", "torchscript")
    assert_user_error(invoke("export", tmp_path), 4, "model.pt", "not found")
    assert not (tmp_path / "export").exists()


def test_export_help_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from metafew.cli import app\n"
        "assert CliRunner().invoke(app, ['export', '--help']).exit_code == 0\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
