"""M_finetune as one self-contained module, pictures in and class probabilities out, and its
export to files that need neither metafew nor its config to run (issue 14).

`Classifier` holds everything `metafew predict` does to a decoded picture: the uint8 -> [0, 1]
scaling (`metafew.data.to_float`: pixels / 255), the shape check (channels, image_size), the
backbone with the fine-tuned weights and the BatchNorm statistics of its training pictures
frozen as buffers (so a picture's output depends on that picture only, whatever the batch), and
the softmax (averaged over the members of a seed ensemble, finetune.members). What it leaves out:
- decoding and resizing (Pillow's BILINEAR resize of `metafew.data.folder.decode_image`, which
  no torch resize reproduces bit for bit): give pictures at image_size, e.g. from
  `read_pictures`;
- finetune.tta's test-time views: they are drawn per position in the picture folder, which a
  module that sees one batch cannot know; it gives the view-0 probabilities, those of
  `metafew predict --set finetune.tta=1`.

Formats:
- torchscript: `torch.jit.load(path)`; the backbone is traced (`torch.jit.trace`: its forward
  returns a tensor or a tuple, which `torch.jit.script` refuses) and the preprocessing scripted
  around it, so the dtype branch (uint8 or float) and the shape check stay in the file. `.classes`
  survives on the loaded module.
- exported-program: `torch.export.load(path).module()`; float32 input only (torch.export
  specialises on the example's dtype), batch size free (1 and up); a wrong shape is refused by
  the program's own input guard.
Both files carry their spec (`spec`) inside (extra file `metafew.json`) and beside
(`<file>.json`).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

import metafew
from metafew.checkpoints import load_finetuned
from metafew.data import UnlabeledImages, load_unlabeled
from metafew.errors import ConfigError, DataError, RunError
from metafew.files import write_atomic, write_error, write_json
from metafew.models import NormStats, build_model
from metafew.stages.predict import model_config

FORMATS = {"torchscript": ".ts.pt", "exported-program": ".pt2"}
"""Export format -> suffix of its default file name (classifier<suffix>)."""

SPEC_NAME = "metafew.json"
"""The spec's name among the extra files inside an exported file."""


class FrozenBackbone(nn.Module):
    """The backbone with frozen BatchNorm statistics: floats x [N, C, H, W] in [0, 1] ->
    probabilities [N, ways]. The statistics are buffers, so `.to(device)` moves them too."""

    def __init__(self, backbone: nn.Module, stats: NormStats) -> None:
        super().__init__()
        self.backbone = backbone
        self.layers = len(stats)
        for k, (mean, var) in enumerate(stats):
            self.register_buffer(f"mean_{k}", mean.detach().clone())
            self.register_buffer(f"var_{k}", var.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = [(getattr(self, f"mean_{k}"), getattr(self, f"var_{k}")) for k in range(self.layers)]
        return torch.softmax(self.backbone(x, stats), dim=-1)


class MeanOf(nn.Module):
    """A seed ensemble (finetune.members): the mean of its members' probabilities [N, ways]."""

    def __init__(self, members: list[FrozenBackbone]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(0)


class Classifier(nn.Module):
    """M_finetune as a module: pictures [N, C, H, W] -> class probabilities [N, ways], in the
    order of `.classes`.

    pictures: float in [0, 1] (a PNG's pixels / 255), or uint8 0..255 (scaled here); C =
    `.channels` (1 gray, 3 RGB) and H = W = `.image_size`, else DataError. Eval mode, no
    gradients; each picture's row depends on that picture only (up to float32 rounding)."""

    def __init__(self, core: nn.Module, classes: list[str], channels: int, image_size: int) -> None:
        super().__init__()
        self.core = core
        self.classes = list(classes)
        self.channels = channels
        self.image_size = image_size

    def forward(self, pictures: torch.Tensor) -> torch.Tensor:
        if (
            pictures.dim() != 4
            or pictures.shape[1] != self.channels
            or pictures.shape[2] != self.image_size
            or pictures.shape[3] != self.image_size
        ):
            raise DataError(
                f"pictures of shape {list(pictures.shape)}: this model takes [N, {self.channels}, "
                f"{self.image_size}, {self.image_size}]; convert and resize them as metafew does "
                "(metafew.read_pictures)"
            )
        x = pictures.float() / 255.0 if pictures.dtype == torch.uint8 else pictures.float()
        return self.core(x)


def classifier(folder: Path) -> Classifier:
    """The fine-tuned model in `folder` (<run>/finetune/<id>) as a Classifier on the CPU, built
    from its model.pt and the config recorded in it, exactly as `metafew predict` builds it."""
    record = load_finetuned(Path(folder))
    cfg = model_config(record, [])
    cores = []
    for params, stats in [(record.params, record.stats), *record.others]:
        backbone = build_model(cfg.model, cfg.data.channels, cfg.data.image_size, cfg.task.ways)
        own = dict(backbone.named_parameters())
        missing = [k for k, p in own.items() if k not in params or params[k].shape != p.shape]
        if missing:
            raise RunError(
                f"{str(folder)!r}: model.pt does not fit the model in its config (parameter "
                f"{missing[0]!r}); was it copied from another run?"
            )
        with torch.no_grad():  # algo.* tensors (Meta-SGD's step sizes, ...) play no part in prediction
            for key, param in own.items():
                param.copy_(params[key])
        cores.append(FrozenBackbone(backbone, [(m.cpu(), v.cpu()) for m, v in stats]))
    core = cores[0] if len(cores) == 1 else MeanOf(cores)
    model = Classifier(core, record.classes, cfg.data.channels, cfg.data.image_size)
    return model.requires_grad_(False).eval()


def read_pictures(folder: str | Path, model: Classifier) -> UnlabeledImages:
    """The pictures directly in `folder` decoded as `metafew predict` decodes them for `model`
    (gray or RGB, Pillow's BILINEAR resize to its image size): `.images` uint8 [N, C, H, W],
    `.names`; DataError if none can be read (unreadable ones are skipped)."""
    return load_unlabeled(Path(folder), model.image_size, model.channels)[0]


@dataclass(frozen=True)
class Exported:
    """An exported file, its spec file beside it and the spec."""

    path: Path
    spec_path: Path
    spec: dict[str, Any]


def spec(model: Classifier, fmt: str, source: Path) -> dict[str, Any]:
    """What a user of the exported file needs: how to load it, the input it takes, the output."""
    scripted = fmt == "torchscript"
    values = "float: [0, 1], a PNG's pixels / 255" + ("; uint8: 0..255, scaled inside" if scripted else "")
    return {
        "format": fmt,
        "load": "torch.jit.load(path)" if scripted else "torch.export.load(path).module()",
        "model": str(source.resolve()),
        "classes": list(model.classes),
        "input": {
            "shape": ["N", model.channels, model.image_size, model.image_size],
            "dtype": ["float32", "uint8"] if scripted else ["float32"],
            "values": values,
            "channels": "gray" if model.channels == 1 else "RGB",
        },
        "output": {
            "shape": ["N", len(model.classes)],
            "values": "class probabilities (softmax), columns in the order of classes",
        },
        "batch": "any N >= 1; BatchNorm statistics are frozen, so a picture's row depends on it alone",
        "metafew": metafew.__version__,
        "torch": torch.__version__,
    }


def _torchscript(model: Classifier, extra: dict[str, str]) -> bytes:
    example = torch.zeros(2, model.channels, model.image_size, model.image_size)
    traced = torch.jit.trace(model.core, example)
    scripted = torch.jit.script(Classifier(traced, model.classes, model.channels, model.image_size))
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer, _extra_files=extra)
    return buffer.getvalue()


def _exported_program(model: Classifier, extra: dict[str, str]) -> bytes:
    example = torch.zeros(2, model.channels, model.image_size, model.image_size)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files=extra)
    return buffer.getvalue()


def export(folder: Path, fmt: str, out: Path | None = None) -> Exported:
    """Write the fine-tuned model in `folder` as `fmt` (FORMATS) to `out` (default
    <folder>/export/classifier<suffix>) and its spec to `<out>.json`; both written atomically."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: must be one of {', '.join(FORMATS)}")
    folder = Path(folder)
    model = classifier(folder)
    path = Path(out) if out is not None else folder / "export" / f"classifier{FORMATS[fmt]}"
    described = spec(model, fmt, folder)
    extra = {SPEC_NAME: json.dumps(described, indent=2)}
    data = _torchscript(model, extra) if fmt == "torchscript" else _exported_program(model, extra)

    def write(handle: IO[bytes]) -> None:
        handle.write(data)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, write)
    except OSError as exc:
        raise write_error(path, exc, "export ") from None
    spec_path = path.with_name(path.name + ".json")
    write_json(spec_path, {**described, "file": path.name})
    return Exported(path, spec_path, described)
