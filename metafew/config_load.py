"""Loading a config: YAML files, dotted overrides, validation, and YAML out again.

A YAML file holds only what differs from the defaults in `metafew.config.schema`; `key=value`
arguments after the command override it (`train.outer_lr=1e-3 task.shots=1`). Everything is
validated here, before any folder or tensor exists: unknown keys name the closest valid key, wrong
types and ranges name the field, the value and what is allowed. The names `algorithm.name` and
`data.dataset` accept are the keys of the algorithm and dataset registries, which is why this
module sits above them (the schema below them).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import re
import types
import typing
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import yaml

from metafew.algorithms import ALGORITHMS, ANY_TEST_WAYS
from metafew.config.schema import Config, RuntimeConfig
from metafew.data import DATASETS
from metafew.errors import ConfigError
from metafew.models import check_model
from metafew.presets import resolve as resolve_preset

REGISTRIES: dict[str, Collection[str]] = {"algorithms": ALGORITHMS, "datasets": DATASETS}
"""Registries whose keys are the choices of a config field (`param(..., registry=...)`)."""

MOVED_KEYS = {f"train.{f.name}": f"runtime.{f.name}" for f in dataclasses.fields(RuntimeConfig)}
"""Keys that moved to another section: refused in a user's config with the new key; renamed
when an older run folder's config.yaml or checkpoint is read (`upgrade_saved`)."""


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
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply to be a config (sections go 3 deep)") from None
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
    moved = MOVED_KEYS.get(".".join(path.split(".")[:2]))
    if moved is not None:
        return ConfigError(f"config key {path!r} moved to {moved!r}: write it under runtime: instead")
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
    if tp is float:
        if isinstance(value, int) and abs(value) > INT_MAX:
            raise ConfigError(f"{path} = {value}: must be a number below {INT_MAX}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{path} = {value!r}: must be a finite number")
    _check_range(path, value, meta)
    return value


def choices_of(meta: dict[str, Any]) -> tuple[str, ...] | None:
    """The values a field accepts: its own `choices`, or its registry's keys."""
    registry = meta.get("registry")
    return tuple(REGISTRIES[registry]) if registry else meta.get("choices")


INT_MAX = 2**31 - 1
"""The largest integer any config field takes (seeds, counts, sizes): larger ones cannot be meant
and overflow the random generators and tensor sizes later."""


def _check_range(path: str, value: Any, meta: dict[str, Any]) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_MAX:
        raise ConfigError(f"{path} = {value}: must be <= {INT_MAX}")
    choices = choices_of(meta)
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


def upgrade_saved(raw: Any) -> Any:
    """A config dict saved by an older metafew (a run's config.yaml, a checkpoint's config) with
    moved keys renamed (`MOVED_KEYS`; and a finetune section from before fine-tuning became a
    training stage, whose `steps`/`lr` were the algorithm's adaptation: now `adapt_steps` and
    `adapt_lr`); anything else unchanged."""
    if not isinstance(raw, dict) or not isinstance(raw.get("train"), dict):
        return raw
    finetune = raw.get("finetune")
    if isinstance(finetune, dict) and "optimizer" not in finetune and "adapt_steps" not in finetune:
        old = dict(finetune)
        raw = {
            **raw,
            "finetune": {"adapt_steps": old.pop("steps", None), "adapt_lr": old.pop("lr", None), **old},
        }
    train = dict(raw["train"])
    moved = {key: train.pop(key) for key in [k for k in train if f"train.{k}" in MOVED_KEYS]}
    if not moved:
        return raw
    return {**raw, "train": train, "runtime": {**moved, **(raw.get("runtime") or {})}}


def from_dict(raw: dict[str, Any]) -> Config:
    """Validate a nested dict and build a `Config`; raises `ConfigError` naming the bad key."""
    if not isinstance(raw, dict):
        raise ConfigError("config must be a mapping of sections such as task:, algorithm:, train:")
    cfg = _build(Config, raw, "")
    _check_consistency(cfg)
    return cfg


def _check_consistency(cfg: Config) -> None:
    check_model(cfg.model, cfg.data.image_size)  # the backbone's own checks (metafew.models.BACKBONES)
    for dataset in DATASETS.values():
        if dataset.check is not None:
            dataset.check(cfg.data)
    if DATASETS[cfg.data.dataset].needs_root and not cfg.data.root:
        raise ConfigError(
            f"data.root is required when data.dataset = {cfg.data.dataset}, e.g. data.root=my_data"
        )
    if cfg.algorithm.name == "protonet" and cfg.model.head != "linear":
        raise ConfigError(
            f"model.head = {cfg.model.head!r}: protonet classifies by distance to class means and needs "
            "model.head=linear"
        )
    other_ways = cfg.eval.ways is not None and cfg.eval.ways != cfg.task.ways
    if other_ways and cfg.algorithm.name not in ANY_TEST_WAYS:
        raise ConfigError(
            f"eval.ways = {cfg.eval.ways}: {cfg.algorithm.name} meta-learns a {cfg.task.ways}-way head, "
            f"so its test episodes have task.ways = {cfg.task.ways}; drop eval.ways (only "
            f"{' and '.join(sorted(ANY_TEST_WAYS))} test another N)"
        )
    if cfg.logging.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "logging.tensorboard = true needs the tensorboard package: pip install 'metafew[tensorboard]' "
            "(or tensorboard), or set logging.tensorboard=false"
        )
    if cfg.data.channels not in (1, 3):
        raise ConfigError(f"data.channels = {cfg.data.channels}: must be 1 (grayscale) or 3 (RGB)")


def episode_setting(cfg: Config) -> Config:
    """`cfg` with task.ways and task.shots those of the test episodes (eval.ways, eval.shots where
    set): what eval samples and scores. The model's head keeps the training N (metafew.learner)."""
    ways = cfg.task.ways if cfg.eval.ways is None else cfg.eval.ways
    shots = cfg.task.shots if cfg.eval.shots is None else cfg.eval.shots
    return dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, ways=ways, shots=shots))


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


ConfigFiles = Sequence[Path | str] | Path | str | None
"""One `--config` value, several (composed left to right), or none."""


def read_config_files(files: ConfigFiles) -> dict[str, Any]:
    """The YAML files (paths or shipped preset names, `metafew.presets.resolve`) deep-merged left
    to right: a later file's key replaces an earlier one's, sections merge key by key."""
    if files is None:
        return {}
    items = [files] if isinstance(files, (str, Path)) else list(files)
    raw: dict[str, Any] = {}
    for item in items:
        raw = merge(raw, read_yaml_file(resolve_preset(item)))
    return raw


def load_config(files: ConfigFiles, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file(s), left to right <- dotted overrides, validated."""
    return from_dict(merge(read_config_files(files), parse_overrides(overrides or [])))


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
            help_text = f.metadata.get("help", "")
            accepted = allowed_values(dict(f.metadata))
            rows.append(
                (
                    prefix + f.name,
                    getattr(defaults, f.name),
                    help_text + (f" [{accepted}]" if accepted else ""),
                )
            )
    return rows


def allowed_values(meta: dict[str, Any]) -> str:
    """What a field accepts in words (`one of: a, b`, `>= 1`), empty when anything of its type goes."""
    choices = choices_of(meta)
    if choices:
        return "one of: " + ", ".join(choices)
    words = {"ge": ">=", "gt": ">", "le": "<="}
    return ", ".join(f"{words[key]} {meta[key]:g}" for key in words if meta.get(key) is not None)


def format_default(value: Any) -> str:
    """A default as YAML would spell it (null, true, 0.001, glyphs), for tables."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def keys_markdown() -> str:
    """Every config key as a markdown table (key, default, meaning and accepted values): the
    README's reference table is this text, and a test keeps the two equal."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, help_text in describe_keys():
        text = help_text.replace("|", "\\|")
        lines.append(f"| `{key}` | `{format_default(default)}` | {text} |")
    return "\n".join(lines) + "\n"
