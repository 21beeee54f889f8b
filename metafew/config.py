"""Typed experiment config: the single source of defaults, YAML loading and dotted overrides.

A YAML file holds only what differs from the defaults below; `key=value` arguments after the
command override it (`train.outer_lr=1e-3 task.shots=1`). Everything is validated here, before
any folder or tensor exists: unknown keys name the closest valid key, wrong types and ranges name
the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metafew.errors import ConfigError


def param(
    default: Any,
    help: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A config field with its one-line help and the range or choices it accepts."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "choices": choices}
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


OMNIGLOT_SOURCES = ("small1", "small2", "background", "evaluation")
"""Omniglot parts by short name: images_background_small1/2 (the minimal background sets),
images_background (30 alphabets) and images_evaluation (20 alphabets)."""


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

    def __post_init__(self) -> None:
        # name syntax and overlaps are checked here, at load time; whether the alphabets exist
        # depends on the files and is checked by the loader
        parts = [part.strip() for part in self.sources.split("+")]
        bad = [part for part in parts if part not in OMNIGLOT_SOURCES]
        if bad or len(set(parts)) != len(parts):
            raise ConfigError(
                f"data.omniglot.sources = {self.sources!r}: must be distinct names from "
                f"{', '.join(OMNIGLOT_SOURCES)} joined by '+', e.g. small1+small2"
            )
        if not comma_list(self.test_alphabets):
            raise ConfigError(
                "data.omniglot.test_alphabets is empty: name the alphabets of the novel classes"
            )
        both = sorted(set(comma_list(self.test_alphabets)) & set(comma_list(self.val_alphabets)))
        if both:
            raise ConfigError(
                f"alphabets in both data.omniglot.test_alphabets and val_alphabets: {', '.join(both)}"
            )


FASHION_MNIST_CLASSES = (
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
"""Fashion-MNIST's ten classes, in label order (Xiao, Rasul & Vollgraf 2017)."""


@dataclass
class FashionMNISTConfig:
    """Which Fashion-MNIST classes meta-train, validate and test (any disjoint choice)."""

    train_classes: str = param("tshirt_top,trouser,pullover,dress,coat", "comma-separated meta-train classes")
    val_classes: str = param("", "comma-separated validation classes ('' = none)")
    test_classes: str = param("sandal,shirt,sneaker,bag,ankle_boot", "comma-separated novel classes")

    def __post_init__(self) -> None:
        groups = {
            key: comma_list(getattr(self, key)) for key in ("train_classes", "val_classes", "test_classes")
        }
        for key, names in groups.items():
            unknown = [n for n in names if n not in FASHION_MNIST_CLASSES]
            if unknown:
                raise ConfigError(
                    f"data.fashion_mnist.{key}: unknown class(es) {', '.join(map(repr, unknown))}; "
                    f"valid: {', '.join(FASHION_MNIST_CLASSES)}"
                )
        seen = [n for names in groups.values() for n in names]
        twice = sorted({n for n in seen if seen.count(n) > 1})
        if twice:
            raise ConfigError(f"data.fashion_mnist: classes in more than one split: {', '.join(twice)}")
        if not groups["train_classes"] or not groups["test_classes"]:
            raise ConfigError("data.fashion_mnist: train_classes and test_classes must not be empty")


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
        choices=("glyphs", "folder", "omniglot", "mini-imagenet", "cifar-fs", "fc100", "fashion-mnist"),
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

    name: str = param("conv4", "backbone", choices=("conv4",))
    hidden: int = param(64, "filters per convolution", ge=1)
    layers: int = param(4, "number of conv blocks", ge=1, le=8)
    pool: str = param("max", "downsampling: 2x2 max-pool or stride-2 conv", choices=("max", "stride"))
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

    name: str = param(
        "maml", "algorithm", choices=("maml", "anil", "metasgd", "reptile", "protonet", "pretrain")
    )
    inner_lr: float = param(0.4, "α, step size of the inner SGD update", gt=0)
    inner_steps: int = param(1, "inner SGD steps per task during meta-training", ge=1)
    eval_inner_steps: int = param(10, "inner SGD steps at validation, eval and fine-tune", ge=0)
    first_order: bool = param(False, "drop second-order terms (first-order MAML)")
    maml: MAMLConfig = section(MAMLConfig)
    reptile: ReptileConfig = section(ReptileConfig)


@dataclass
class TrainConfig:
    """Meta-training loop: outer optimizer, schedule, validation, devices."""

    name: str = param("run", "run name, part of the run folder's name")
    runs_dir: str = param("runs", "folder that holds run folders")
    seed: int = param(0, "seed of the model init and the episode streams", ge=0)
    iterations: int = param(300, "outer (meta) updates", ge=1)
    outer_lr: float = param(1e-3, "β, learning rate of the outer optimizer (Reptile: ε)", gt=0, le=100)
    optimizer: str = param("adam", "outer optimizer", choices=("adam", "sgd"))
    lr_schedule: str = param("constant", "β over the iterations", choices=("constant", "linear", "cosine"))
    min_lr_fraction: float = param(0.0, "linear/cosine schedules end at this fraction of β", ge=0, le=1)
    meta_batch_size: int = param(4, "tasks per outer update", ge=1)
    batching: str = param(
        "auto",
        "how tasks of a meta-batch run: loop, vmap, fused (one batched pass, MAML on Conv-4 with a "
        "linear head; else vmap) or auto (fused where it applies, else vmap)",
        choices=("auto", "fused", "loop", "vmap"),
    )
    chunk_size: int = param(0, "tasks per vmap or fused call (0: the whole meta-batch)", ge=0)
    max_memory: int = param(
        256,
        "MB the tasks of one vmap/fused call may use (estimated); splits the meta-batch (0: no limit)",
        ge=0,
    )
    val_every: int = param(100, "validate every this many iterations (0: never)", ge=0)
    val_episodes: int = param(100, "episodes per validation", ge=1)
    log_every: int = param(10, "write a metrics line every this many iterations", ge=1)
    checkpoint_every: int = param(50, "save checkpoints/last.pt every this many iterations", ge=1)
    device: str = param("auto", "cpu, cuda, cuda:N or auto")
    threads: int = param(0, "torch CPU threads (0: torch's default)", ge=0)


@dataclass
class FinetuneConfig:
    """Adaptation of the meta-learned model to the labeled novel pictures."""

    steps: int | None = param(None, "SGD steps (null: algorithm.eval_inner_steps)", ge=0)
    lr: float | None = param(
        None, "SGD step size (null: the algorithm's own: α, or learned step sizes)", gt=0
    )


@dataclass
class EvalConfig:
    """Test episodes on classes never used for meta-training."""

    episodes: int = param(600, "number of test episodes", ge=1)
    seed: int = param(1234, "seed of the test-episode stream", ge=0)
    queries: int | None = param(
        None, "queries per class (null: as many as the classes allow, ≤ task.queries)", ge=1
    )
    norm: str = param(
        "transductive",
        "BatchNorm statistics at test time: from the query batch (as in MAML) or the support set",
        choices=("transductive", "support"),
    )
    checkpoint: str = param("best", "which checkpoint to evaluate", choices=("best", "last"))
    chunk_size: int = param(
        0, "test episodes adapted at once (0: auto, 4 to 16 within train.max_memory; 4 under vmap)", ge=0
    )


@dataclass
class Config:
    """A whole experiment."""

    data: DataConfig = section(DataConfig)
    task: TaskConfig = section(TaskConfig)
    model: ModelConfig = section(ModelConfig)
    algorithm: AlgorithmConfig = section(AlgorithmConfig)
    train: TrainConfig = section(TrainConfig)
    finetune: FinetuneConfig = section(FinetuneConfig)
    eval: EvalConfig = section(EvalConfig)


# ---------------------------------------------------------------------------------------------
# YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-3` as a float and refuses duplicate keys."""


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)$")


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise ConfigError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}: keep one")
        seen.add(key)
    return loader.construct_mapping(node)


def _construct_str(loader: _Loader, node: yaml.ScalarNode) -> Any:
    value = loader.construct_scalar(node)
    if node.style is None and isinstance(value, str) and _FLOAT.match(value):
        return float(value)
    return value


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SCALAR_TAG, _construct_str)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML safely (no python tags), with `1e-3` as a float; errors name `source`."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}{where}: invalid YAML ({problem})") from None


# ---------------------------------------------------------------------------------------------
# building and validating


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp)


def valid_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """All dotted keys of a config class, e.g. `train.outer_lr`."""
    keys = []
    for name, tp in _field_types(cls).items():
        if _is_section(tp):
            keys.extend(valid_keys(tp, f"{prefix}{name}."))
        else:
            keys.append(prefix + name)
    return keys


def _unknown_key(path: str) -> ConfigError:
    close = difflib.get_close_matches(path, valid_keys(), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else "see `metafew config` for the valid keys"
    return ConfigError(f"unknown config key {path!r}: {hint}")


def _describe(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[tp]


def _coerce(path: str, tp: Any, value: Any, meta: dict[str, Any]) -> Any:
    args = typing.get_args(tp)
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        if value is None:
            return None
        tp = next(a for a in args if a is not type(None))
    ok = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    )
    if not ok:
        fix = " (quote it in YAML)" if tp is str else ""
        null = " or null" if optional else ""
        raise ConfigError(f"{path} = {value!r}: expected {_describe(tp)}{null}{fix}")
    value = float(value) if tp is float else value
    _check_range(path, value, meta)
    return value


def _check_range(path: str, value: Any, meta: dict[str, Any]) -> None:
    choices = meta.get("choices")
    if choices and value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{path} = {value!r}: must be one of {', '.join(choices)}{hint}")
    for key, op, word in (
        ("ge", float.__ge__, ">="),
        ("gt", float.__gt__, ">"),
        ("le", float.__le__, "<="),
    ):
        bound = meta.get(key)
        if bound is not None and isinstance(value, (int, float)) and not op(float(value), float(bound)):
            raise ConfigError(f"{path} = {value!r}: must be {word} {bound:g}")


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    hints = _field_types(cls)
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        path = prefix + str(key)
        if key not in hints:
            while isinstance(value, dict) and value:  # name the full path of a misspelled section
                key, value = next(iter(value.items()))
                path = f"{path}.{key}"
            raise _unknown_key(path)
        tp = hints[key]
        if _is_section(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{path} = {value!r}: expected a section of keys")
            kwargs[key] = _build(tp, value, path + ".")
        else:
            meta = dict(next(f for f in dataclasses.fields(cls) if f.name == key).metadata)
            kwargs[key] = _coerce(path, tp, value, meta)
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise _unknown_key(path)
        node = child
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn `["task.shots=1", "train.outer_lr=1e-3"]` into a nested dict of YAML-typed values."""
    tree: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not key=value, e.g. task.shots=1")
        value = parse_yaml(text, f"override {key}") if text.strip() else None
        _set_dotted(tree, key.strip(), value)
    return tree


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `extra` into a copy of `base` (sections merge, values replace)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def from_dict(raw: dict[str, Any]) -> Config:
    """Validate a nested dict and build a `Config`; raises `ConfigError` naming the bad key."""
    if not isinstance(raw, dict):
        raise ConfigError("config must be a mapping of sections such as task:, algorithm:, train:")
    cfg = _build(Config, raw, "")
    _check_consistency(cfg)
    return cfg


def downsampled_size(image_size: int, layers: int, pool: str) -> int:
    """Side of the feature map after `layers` halving blocks (max-pool floors, stride-2 ceils)."""
    size = image_size
    for _ in range(layers):
        size = (size + 1) // 2 if pool == "stride" else size // 2
    return size


def _check_consistency(cfg: Config) -> None:
    if downsampled_size(cfg.data.image_size, cfg.model.layers, cfg.model.pool) < 1:
        raise ConfigError(
            f"model.layers = {cfg.model.layers}: data.image_size = {cfg.data.image_size} is too small "
            "for that many downsampling blocks; use fewer layers or larger images"
        )
    needs_root = ("folder", "omniglot", "mini-imagenet", "cifar-fs", "fc100")
    if cfg.data.dataset in needs_root and not cfg.data.root:
        raise ConfigError(
            f"data.root is required when data.dataset = {cfg.data.dataset}, e.g. data.root=my_data"
        )
    if cfg.algorithm.name == "protonet" and cfg.model.head != "linear":
        raise ConfigError(
            f"model.head = {cfg.model.head!r}: protonet classifies by distance to class means and needs "
            "model.head=linear"
        )
    if cfg.data.channels not in (1, 3):
        raise ConfigError(f"data.channels = {cfg.data.channels}: must be 1 (grayscale) or 3 (RGB)")


def read_yaml_file(path: Path) -> dict[str, Any]:
    """Read a YAML config file into a dict (empty file -> {})."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found: check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc}") from None
    raw = parse_yaml(text, str(path))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections (task:, train:, ...)")
    return raw


def load_config(path: Path | None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file <- dotted overrides, validated."""
    raw = read_yaml_file(path) if path is not None else {}
    return from_dict(merge(raw, parse_overrides(overrides or [])))


def to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as plain nested dicts (what goes into run folders and checkpoints)."""
    return dataclasses.asdict(cfg)


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes strings our loader would read as floats (`'1e-3'`)."""


_Dumper.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def dump_yaml(cfg: Config) -> str:
    """The resolved config as YAML text (reads back to the same Config)."""
    return yaml.dump(to_dict(cfg), Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def describe_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) for every field, for `metafew config` and the README."""
    rows: list[tuple[str, Any, str]] = []
    defaults = cls()
    for f in dataclasses.fields(cls):
        tp = _field_types(cls)[f.name]
        if _is_section(tp):
            rows.extend(describe_keys(tp, f"{prefix}{f.name}."))
        else:
            rows.append((prefix + f.name, getattr(defaults, f.name), f.metadata.get("help", "")))
    return rows
