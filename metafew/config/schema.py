"""The typed experiment config: every default, once, with its one-line help and its range.

This module is the ground floor: it imports nothing of metafew but errors. Loading YAML,
overrides and the validation against the algorithm and dataset registries live in
`metafew.config_load`, which sits above those registries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def param(
    default: Any,
    help: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    choices: tuple[str, ...] | None = None,
    registry: str | None = None,
) -> Any:
    """A config field with its one-line help and the range or choices it accepts; `registry`
    names the registry whose keys are the choices ("algorithms", "datasets"), read at load time."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "choices": choices, "registry": registry}
    return field(default=default, metadata=meta)


def section(cls: type) -> Any:
    """A nested config section whose defaults come from `cls`."""
    return field(default_factory=cls)


@dataclass
class GlyphsConfig:
    """The embedded procedurally generated glyph dataset (no download)."""

    seed: int = param(0, "seed of the glyph generator; the same seed gives the same images", ge=0)
    train_classes: int = param(10, "number of meta-train classes", ge=2)
    val_classes: int = param(5, "number of held-out validation classes (0: no validation)", ge=0)
    novel_classes: int = param(5, "number of novel classes (fine-tune, eval, predict)", ge=2)
    train_samples: int = param(30, "labeled images per meta-train and validation class", ge=2)
    novel_labeled: int = param(15, "labeled images per novel class", ge=2)
    novel_unlabeled: int = param(15, "unlabeled images per novel class (for predict)", ge=0)


def comma_list(text: str) -> list[str]:
    """`"a, b,,c"` -> `["a", "b", "c"]`: a comma-separated config value as a list of names."""
    return [part.strip() for part in text.split(",") if part.strip()]


OMNIGLOT_SPLITS = ("vinyals", "lake", "small1", "small2", "alphabets")
"""Named Omniglot splits; see metafew/data/omniglot.py."""


@dataclass
class OmniglotConfig:
    """Omniglot (Lake et al. 2015) read from the official zips or their folders in data.root."""

    split: str = param(
        "vinyals",
        "vinyals: 1200/423 characters of all 50 alphabets; lake: background/evaluation; "
        "small1, small2: a minimal background set/evaluation; alphabets: sources + test_alphabets",
        choices=OMNIGLOT_SPLITS,
    )
    sources: str = param(
        "small1+small2", "split alphabets: '+'-joined parts: small1, small2, background, evaluation"
    )
    test_alphabets: str = param(
        "Japanese_(katakana),Sanskrit,Tagalog", "split alphabets: comma-separated novel alphabets"
    )
    val_alphabets: str = param(
        "", "comma-separated meta-train alphabets held out for validation ('' = none; not vinyals)"
    )
    val_characters: int = param(
        0, "split vinyals: characters of the 1200 held out for validation (e.g. 172)", ge=0, le=1100
    )
    rotations: bool = param(True, "add 90/180/270° rotated meta-train characters as extra classes")


@dataclass
class FashionMNISTConfig:
    """Which Fashion-MNIST classes meta-train, validate and test (any disjoint choice)."""

    train_classes: str = param("tshirt_top,trouser,pullover,dress,coat", "comma-separated meta-train classes")
    val_classes: str = param("", "comma-separated validation classes ('' = none)")
    test_classes: str = param("sandal,shirt,sneaker,bag,ankle_boot", "comma-separated novel classes")


@dataclass
class FolderConfig:
    """A folder of class folders without meta_train/: the automatic class-disjoint split."""

    val_fraction: float = param(0.15, "share of the classes held out for validation", ge=0, le=0.5)
    test_fraction: float = param(0.25, "share of the classes that become the novel classes", gt=0, le=0.8)
    split_seed: int = param(0, "seed of the class split (recorded in the run folder)", ge=0)


@dataclass
class DataConfig:
    """Where images come from and how they are decoded."""

    dataset: str = param(
        "glyphs",
        "dataset name (metafew data list)",
        registry="datasets",
    )
    root: str | None = param(None, "folder holding the dataset's files (metafew data list says which)")
    download: bool = param(False, "download missing files from the official sources (checksum-verified)")
    cache: bool = param(True, "keep decoded tensors in the cache so the next run starts in seconds")
    image_size: int = param(28, "images are resized to image_size x image_size pixels", ge=4)
    channels: int = param(1, "1 = grayscale, 3 = RGB", choices=None, ge=1, le=3)
    novel_labeled: int = param(
        0,
        "labeled pictures per novel class (0: all); the rest become unlabeled pictures for predict",
        ge=0,
    )
    glyphs: GlyphsConfig = section(GlyphsConfig)
    omniglot: OmniglotConfig = section(OmniglotConfig)
    fashion_mnist: FashionMNISTConfig = section(FashionMNISTConfig)
    folder: FolderConfig = section(FolderConfig)


@dataclass
class TaskConfig:
    """Shape of an N-way K-shot episode."""

    ways: int = param(5, "N, classes per episode", ge=2)
    shots: int = param(5, "K, labeled support images per class", ge=1)
    queries: int = param(15, "query images per class", ge=1)


@dataclass
class ModelConfig:
    """Backbone network and its classifier head."""

    name: str = param(
        "conv4",
        "backbone: Conv-N (hidden, layers, pool) or ResNet-12 (widths)",
        choices=("conv4", "resnet12"),
    )
    hidden: int = param(64, "conv4: filters per convolution", ge=1)
    layers: int = param(4, "conv4: number of conv blocks", ge=1, le=8)
    pool: str = param("max", "conv4: downsampling, 2x2 max-pool or stride-2 conv", choices=("max", "stride"))
    widths: str = param("64,160,320,640", "resnet12: comma list of the 4 residual blocks' widths")
    dropblock: float = param(
        0.0, "resnet12: DropBlock drop rate after blocks 3 and 4 while meta-training (0: off)", ge=0, le=0.9
    )
    dropblock_size: int = param(5, "resnet12: side of a dropped DropBlock square, in feature pixels", ge=1)
    head: str = param(
        "linear", "classifier: linear, or cosine similarity (Baseline++)", choices=("linear", "cosine")
    )
    cosine_scale: float = param(10.0, "s, logits = s·cos(feature, class weight) for the cosine head", gt=0)


@dataclass
class MAMLConfig:
    """MAML++ options (Antoniou, Edwards & Storkey 2019) for maml, anil and metasgd."""

    multi_step_loss: bool = param(False, "MSL: weighted query loss after every inner step")
    msl_iterations: int = param(100, "iterations over which MSL's weights move to the last step", ge=1)
    learn_inner_lr: bool = param(False, "LSLR: learn one inner learning rate per layer and step")
    per_step_bn: bool = param(False, "BNWB: separate BatchNorm weights and biases for every step")
    first_order_iterations: int = param(0, "DA: first order for this many iterations, then second", ge=0)


@dataclass
class ReptileConfig:
    """Reptile's inner loop (Nichol, Achiam & Schulman 2018)."""

    inner_optimizer: str = param("adam", "optimizer of the k inner steps", choices=("sgd", "adam"))
    inner_batch_size: int = param(10, "pictures per inner mini-batch (0: all of the task's pictures)", ge=0)
    use_query: bool = param(True, "train the inner loop on support and query pictures (no split)")


@dataclass
class AlgorithmConfig:
    """Meta-learning algorithm and its inner loop."""

    name: str = param("maml", "algorithm (metafew.algorithms.ALGORITHMS)", registry="algorithms")
    inner_lr: float = param(0.4, "α, step size of the inner SGD update", gt=0)
    inner_steps: int = param(1, "inner SGD steps per task during meta-training", ge=1)
    eval_inner_steps: int = param(10, "inner SGD steps at validation, eval and fine-tune", ge=0)
    first_order: bool = param(False, "drop second-order terms (first-order MAML)")
    maml: MAMLConfig = section(MAMLConfig)
    reptile: ReptileConfig = section(ReptileConfig)


@dataclass
class TrainConfig:
    """Meta-training loop: outer optimizer, schedule, validation, checkpoints."""

    name: str = param("run", "run name, part of the run folder's name")
    runs_dir: str = param("runs", "folder that holds run folders")
    seed: int = param(0, "seed of the model init and the episode streams", ge=0)
    augment: bool = param(False, "augment every training episode's pictures (augment.*)")
    iterations: int = param(300, "outer (meta) updates", ge=1)
    outer_lr: float = param(1e-3, "β, learning rate of the outer optimizer (Reptile: ε)", gt=0, le=100)
    optimizer: str = param("adam", "outer optimizer", choices=("adam", "sgd"))
    lr_schedule: str = param("constant", "β over the iterations", choices=("constant", "linear", "cosine"))
    min_lr_fraction: float = param(0.0, "linear/cosine schedules end at this fraction of β", ge=0, le=1)
    meta_batch_size: int = param(4, "tasks per outer update", ge=1)
    val_every: int = param(100, "validate every this many iterations (0: never)", ge=0)
    val_episodes: int = param(100, "episodes per validation", ge=1)
    final_val_episodes: int | None = param(
        None, "episodes of the validation after the last iteration (null: train.val_episodes)", ge=1
    )
    time_limit: float | None = param(
        None,
        "minutes of training (over all resumes), then a last validation and checkpoint",
        gt=0,
    )
    patience: int | None = param(
        None, "early stopping: end after this many validations without a new best (null: never)", ge=1
    )
    log_every: int = param(10, "write a metrics line every this many iterations", ge=1)
    checkpoint_every: int = param(50, "save checkpoints/last.pt every this many iterations", ge=1)


@dataclass
class LoggingConfig:
    """Where training metrics go besides <run>/metrics.jsonl and learning_curve.png."""

    tensorboard: bool = param(
        False,
        "also write TensorBoard event files to the run's tensorboard/ folder (metafew[tensorboard] extra)",
    )


@dataclass
class RuntimeConfig:
    """Where and how the computation runs, for every command (train, eval, finetune, predict);
    none of it changes the maths."""

    device: str = param("auto", "cpu, cuda, cuda:N or auto")
    threads: int = param(0, "torch CPU threads (0: torch's default)", ge=0)
    batching: str = param(
        "auto",
        "how tasks of a meta-batch run: loop, vmap, fused (one batched pass, MAML on Conv-4 with a "
        "linear head; else vmap) or auto (fused where it applies, else loop)",
        choices=("auto", "fused", "loop", "vmap"),
    )
    chunk_size: int = param(0, "training tasks per vmap or fused call (0: the whole meta-batch)", ge=0)
    max_memory: int = param(
        256,
        "MB the tasks of one vmap/fused call may use (estimated); splits the meta-batch (0: no limit)",
        ge=0,
    )


@dataclass
class AugmentConfig:
    """Random transforms of the pictures (metafew.augment), batched and seeded by (seed, step), for
    the stages that set their own `augment: true` (train, finetune) and for test-time views."""

    translate: float = param(0.1, "largest shift, as a fraction of the side, per axis", ge=0, le=1)
    rotate: float = param(10.0, "largest rotation, in degrees", ge=0, le=180)
    scale: float = param(0.1, "zoom factor drawn in [1 - scale, 1 + scale]", ge=0, le=0.9)
    flip: str = param(
        "auto",
        "horizontal flips: auto (where the dataset says flips keep labels), on, off",
        choices=("auto", "on", "off"),
    )
    brightness: float = param(0.1, "added to [0, 1] pixels, drawn in [-brightness, brightness]", ge=0, le=1)
    contrast: float = param(0.1, "contrast factor drawn in [1 - contrast, 1 + contrast]", ge=0, le=1)
    saturation: float = param(0.0, "RGB only: saturation factor drawn in [1 - s, 1 + s]", ge=0, le=1)


@dataclass
class FinetuneConfig:
    """M_meta -> M_finetune on the labeled novel pictures: the algorithm's own adaptation, then
    `steps` optimizer steps on them (with `holdout` > 0: early-stopped on a held-out part, then
    refitted on all)."""

    adapt_steps: int | None = param(
        None, "steps of the algorithm's own adaptation first (null: algorithm.eval_inner_steps)", ge=0
    )
    adapt_lr: float | None = param(
        None, "its step size (null: the algorithm's own: α, or learned step sizes)", gt=0
    )
    steps: int = param(
        100, "optimizer steps after the adaptation (with holdout > 0: the most; 0: none)", ge=0
    )
    optimizer: str = param("adam", "optimizer of those steps", choices=("adam", "sgd"))
    lr: float = param(1e-3, "its learning rate (SGD: with momentum 0.9)", gt=0, le=100)
    weight_decay: float = param(0.0, "L2 weight decay of the optimizer", ge=0)
    params: str = param(
        "all", "tensors that adapt: all, or the classifier head only", choices=("all", "head")
    )
    batch_size: int = param(0, "labeled pictures per step (0: all of them)", ge=0)
    unlabeled_batch: int = param(
        512,
        "unlabeled pictures per step for entropy, fixmatch and selftrain's student, drawn afresh each "
        "step (0: all)",
        ge=0,
    )
    holdout: float = param(
        0.0,
        "fraction of each class held out to pick the step count (early stopping), then refit on all "
        "(0: run all steps; chosen on validation sets, BENCHMARKS 7h)",
        ge=0,
        le=0.5,
    )
    eval_every: int = param(10, "steps between held-out checks", ge=1)
    augment: bool = param(True, "augment the labeled pictures each step (augment.*)")
    unlabeled: str = param(
        "none",
        "use the unlabeled pictures: entropy (transductive fine-tuning, Dhillon et al. 2020), "
        "fixmatch (confident pseudo-labels, Sohn et al. 2020), softkmeans (prototypes refined on "
        "them, Ren et al. 2018; linear head), selftrain (a student fitted on the labeled pictures "
        "and the teacher's class-balanced pseudo-labels), none",
        choices=("none", "entropy", "fixmatch", "softkmeans", "selftrain"),
    )
    unlabeled_weight: float | None = param(
        None,
        "λ, weight of the unlabeled-picture loss (null: 0.1 for entropy, 1 for fixmatch and selftrain)",
        ge=0,
    )
    kmeans_steps: int = param(
        1, "softkmeans: refinement steps, each from the last step's prototypes (Ren et al. use 1)", ge=1
    )
    threshold: float = param(0.9, "τ, FixMatch keeps pseudo-labels with confidence ≥ τ", gt=0, le=1)
    strong: float = param(2.0, "FixMatch's strong view: augment.* magnitudes × this", gt=0)
    pseudo_keep: float = param(
        0.5,
        "selftrain: share of the unlabeled pictures pseudo-labeled each round, the teacher's most "
        "confident ones, equally many per predicted class",
        gt=0,
        le=1,
    )
    student_steps: int = param(300, "selftrain: optimizer steps of each student", ge=1)
    rounds: int = param(1, "selftrain: teacher -> student rounds, each student the next teacher", ge=1)
    tta: int = param(1, "views averaged at predict time (test-time augmentation; 1: none)", ge=1, le=64)
    members: int = param(
        5,
        "models fine-tuned with seeds seed, seed+1, ...; M_finetune averages their probabilities "
        "(a seed ensemble in one model; 1: one model)",
        ge=1,
        le=16,
    )
    seed: int = param(0, "seed of the held-out split, the batches and the transforms", ge=0)


@dataclass
class EvalConfig:
    """Test episodes on classes never used for meta-training."""

    episodes: int = param(600, "number of test episodes", ge=1)
    seed: int = param(1234, "seed of the test-episode stream", ge=0)
    ways: int | None = param(
        None,
        "N of the test episodes (null: task.ways; another N only for algorithms that meta-learn no "
        "N-way head: protonet, pretrain)",
        ge=2,
    )
    shots: int | None = param(None, "K of the test episodes (null: task.shots)", ge=1)
    queries: int | None = param(
        None, "queries per class (null: as many as the classes allow, ≤ task.queries)", ge=1
    )
    norm: str = param(
        "transductive",
        "BatchNorm statistics at test time: from the query batch (as in MAML) or the support set",
        choices=("transductive", "support"),
    )
    checkpoint: str = param("best", "which checkpoint to evaluate", choices=("best", "last"))
    split: str = param(
        "novel",
        "classes the episodes are drawn from: the novel (test) classes, or the meta-validation ones, "
        "to choose an eval recipe without the test classes",
        choices=("novel", "meta_val"),
    )
    finetune: bool = param(
        False,
        "adapt each episode with the finetune.* recipe instead of the algorithm's own adaptation (its "
        "queries are the unlabeled pictures where finetune.unlabeled uses them: transductive)",
    )
    chunk_size: int = param(
        0, "test episodes adapted at once (0: auto, 4 to 16 within runtime.max_memory; 4 under vmap)", ge=0
    )


@dataclass
class Config:
    """A whole experiment."""

    data: DataConfig = section(DataConfig)
    task: TaskConfig = section(TaskConfig)
    model: ModelConfig = section(ModelConfig)
    algorithm: AlgorithmConfig = section(AlgorithmConfig)
    train: TrainConfig = section(TrainConfig)
    augment: AugmentConfig = section(AugmentConfig)
    finetune: FinetuneConfig = section(FinetuneConfig)
    eval: EvalConfig = section(EvalConfig)
    logging: LoggingConfig = section(LoggingConfig)
    runtime: RuntimeConfig = section(RuntimeConfig)
