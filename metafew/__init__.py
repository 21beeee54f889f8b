"""metafew: few-shot meta-learning on images, from the command line or from Python.

The Python API (metafew.api) is importable from here, `metafew.train(...)`,
`metafew.load_finetuned(...)` and so on, but only imported on first use: `import metafew`
happens on every CLI start and must not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # for type checkers and editors; at run time, __getattr__ below
    from metafew.api import (
        Classifier,
        Exported,
        MetaModel,
        PredictResult,
        export_model,
        finetune,
        load_finetuned,
        load_meta,
        predict,
        read_pictures,
        train,
    )

__all__ = [
    "Classifier",
    "Exported",
    "MetaModel",
    "PredictResult",
    "__version__",
    "export_model",
    "finetune",
    "load_finetuned",
    "load_meta",
    "predict",
    "read_pictures",
    "train",
]
"""metafew.__version__ and the names of metafew.api available as metafew.<name> (imported lazily)."""


def __getattr__(name: str) -> Any:
    """metafew.<API name>: metafew.api's, imported on first use (PEP 562)."""
    if name in __all__:
        from metafew import api

        return getattr(api, name)
    raise AttributeError(f"module 'metafew' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
