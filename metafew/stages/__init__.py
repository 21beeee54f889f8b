"""The stages after meta-training, on run folders: evaluate a checkpoint on seeded test episodes,
fine-tune it into M_finetune, choose a recipe by cross-validation, label unlabeled pictures.
Each stage loads what it needs from the folder, computes, writes its outputs there and returns a
result record.

    <run>/eval/<stamp>-<id>.json
    <run>/finetune/<stamp>-<id>/{model.pt, finetune.json}
    <run>/finetune/<id>/predict/<stamp>-<id>/{predictions.csv, summary.json, confusion.csv, confusion.png}
"""

from metafew.stages.evaluate import EvalResult, Paired, evaluate_run, paired_results, read_result
from metafew.stages.finetune import FinetuneResult, finetune_run
from metafew.stages.predict import PredictResult, predict_run, spreadsheet_safe, write_predictions
from metafew.stages.select import Estimate, select_run

__all__ = [
    "Estimate",
    "EvalResult",
    "FinetuneResult",
    "Paired",
    "PredictResult",
    "evaluate_run",
    "finetune_run",
    "paired_results",
    "predict_run",
    "read_result",
    "select_run",
    "spreadsheet_safe",
    "write_predictions",
]
