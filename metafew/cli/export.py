"""`metafew export`: M_finetune as one file that runs without metafew (metafew.export)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from metafew.cli.common import say, user_errors

FORMATS = ("torchscript", "exported-program")
"""metafew.export.FORMATS, spelled out here so that `--help` does not import torch."""


def export(
    model_dir: Annotated[Path, typer.Argument(help="fine-tuned model folder (<run>/finetune/<id>)")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="torchscript (torch.jit.load; float or uint8 input) or exported-program "
            "(torch.export.load, .pt2; float32 input)",
        ),
    ] = "torchscript",
    out: Annotated[
        Path | None,
        typer.Option(help="file to write (default <model>/export/classifier.ts.pt or .pt2)"),
    ] = None,
) -> None:
    """Export M_finetune with its preprocessing: pictures [N, C, H, W] -> class probabilities [N, ways].

    Writes the file and, beside it, <file>.json with the class names and the input spec."""
    from metafew.export import export as export_model

    with user_errors():
        result = export_model(model_dir, fmt, out)
    s = result.spec
    shape = ", ".join(str(d) for d in s["input"]["shape"])
    say(
        f"exported: {result.path} ({fmt}; pictures [{shape}] {' or '.join(s['input']['dtype'])} "
        f"-> probabilities [N, {len(s['classes'])}] of {', '.join(s['classes'])})"
    )
    say(f"spec: {result.spec_path}")
    say(f"load: {s['load'].replace('path', repr(str(result.path)))}")
