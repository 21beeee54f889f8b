"""metafew.config: defaults, YAML files, dotted overrides and the validation messages."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from metafew.config import AlgorithmConfig, Config, DataConfig, TaskConfig, TrainConfig
from metafew.config_load import (
    describe_keys,
    dump_yaml,
    from_dict,
    load_config,
    parse_overrides,
    parse_yaml,
    to_dict,
    valid_keys,
)
from metafew.errors import ConfigError


def write_yaml(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(overrides: list[str], path: Path | None = None) -> str:
    """The message of the ConfigError that loading raises (and check its exit code)."""
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    assert info.value.exit_code == 2
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# defaults and files


def test_defaults_equal_the_dataclass_defaults() -> None:
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.task == TaskConfig()
    assert (cfg.task.ways, cfg.task.shots, cfg.task.queries) == (5, 5, 15)
    assert cfg.algorithm.inner_lr == AlgorithmConfig().inner_lr == 0.4
    assert cfg.train.outer_lr == TrainConfig().outer_lr == 1e-3
    assert cfg.finetune.adapt_steps is None and cfg.finetune.adapt_lr is None
    assert from_dict({}) == Config()


def test_yaml_file_overrides_only_what_it_lists(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "task:\n  shots: 1\ntrain:\n  iterations: 7\ndata:\n  glyphs:\n    seed: 9\n")
    cfg = load_config(path)
    assert cfg.task.shots == 1
    assert cfg.train.iterations == 7
    assert cfg.data.glyphs.seed == 9
    expected = Config()
    expected.task.shots = 1
    expected.train.iterations = 7
    expected.data.glyphs.seed = 9
    assert cfg == expected


def test_empty_yaml_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write_yaml(tmp_path, "")) == Config()


def test_overrides_apply_on_top_of_the_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "task:\n  shots: 1\n  ways: 3\n")
    cfg = load_config(path, ["task.shots=2", "data.glyphs.train_classes=4", "train.name=abc"])
    assert (cfg.task.ways, cfg.task.shots) == (3, 2)
    assert cfg.data.glyphs.train_classes == 4
    assert cfg.train.name == "abc"
    assert cfg.task.queries == TaskConfig().queries


def test_parse_overrides_builds_a_nested_typed_dict() -> None:
    tree = parse_overrides(
        [
            "task.shots=1",
            "train.outer_lr=1e-3",
            "data.glyphs.seed=3",
            "train.name=x",
            "finetune.adapt_lr=null",
        ]
    )
    assert tree == {
        "task": {"shots": 1},
        "train": {"outer_lr": 1e-3, "name": "x"},
        "data": {"glyphs": {"seed": 3}},
        "finetune": {"adapt_lr": None},
    }
    assert isinstance(tree["train"]["outer_lr"], float)


def test_later_override_of_the_same_key_wins() -> None:
    assert load_config(None, ["task.shots=1", "task.shots=3"]).task.shots == 3


@pytest.mark.parametrize("item", ["task.shots", "=3", " =3", ""])
def test_override_without_key_value_is_rejected(item: str) -> None:
    with pytest.raises(ConfigError, match="not key=value") as info:
        parse_overrides([item])
    assert info.value.exit_code == 2


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    message = config_error([], path)
    assert "nope.yaml" in message and "not found" in message


def test_invalid_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "task:\n  shots: [1, 2\n  ways: 3\n", name="broken.yaml")
    message = config_error([], path)
    assert "broken.yaml" in message
    assert "invalid YAML" in message
    assert "line" in message


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    message = config_error([], write_yaml(tmp_path, "- a\n- b\n", name="list.yaml"))
    assert "list.yaml" in message and "mapping" in message


def test_duplicate_yaml_keys_are_rejected_with_the_line(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "task:\n  shots: 1\n  ways: 3\n  shots: 2\n")
    message = config_error([], path)
    assert "duplicate key 'shots'" in message
    assert "line 4" in message


def test_duplicate_sections_are_rejected(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "task:\n  shots: 1\ntrain:\n  seed: 1\ntask:\n  ways: 3\n")
    message = config_error([], path)
    assert "duplicate key 'task'" in message and "line 5" in message


def test_python_tags_are_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f"train:\n  name: !!python/object/apply:os.system ['touch {marker}']\n"
    message = config_error([], write_yaml(tmp_path, text, name="evil.yaml"))
    assert "evil.yaml" in message
    assert not marker.exists()
    with pytest.raises(ConfigError):
        parse_yaml(f"!!python/object/apply:os.system ['touch {marker}']", "override")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# types


@pytest.mark.parametrize("text", ["1e-3", "1.0e-3", "1E-3", "+1e-3", "0.001"])
def test_scientific_notation_loads_as_float(text: str, tmp_path: Path) -> None:
    assert parse_yaml(text, "x") == pytest.approx(1e-3)
    assert isinstance(parse_yaml(text, "x"), float)
    cfg = load_config(write_yaml(tmp_path, f"train:\n  outer_lr: {text}\n"))
    assert cfg.train.outer_lr == pytest.approx(1e-3)
    assert load_config(None, [f"train.outer_lr={text}"]).train.outer_lr == pytest.approx(1e-3)


def test_exponent_without_sign_or_dot_is_float() -> None:
    assert parse_yaml("5e2", "x") == 500.0
    assert isinstance(parse_yaml("5e2", "x"), float)
    assert load_config(None, ["algorithm.inner_lr=5e2"]).algorithm.inner_lr == 500.0


@pytest.mark.parametrize("quoted", ['"1e-3"', "'1e-3'"])
def test_quoted_number_stays_a_string_and_is_rejected_for_a_float(quoted: str, tmp_path: Path) -> None:
    assert parse_yaml(quoted, "x") == "1e-3"
    message = config_error([f"train.outer_lr={quoted}"])
    assert "train.outer_lr" in message and "'1e-3'" in message and "expected a number" in message
    message = config_error([], write_yaml(tmp_path, f"train:\n  outer_lr: {quoted}\n"))
    assert "train.outer_lr" in message and "expected a number" in message


def test_quoted_number_is_accepted_for_a_string_field() -> None:
    assert load_config(None, ['train.name="1e-3"']).train.name == "1e-3"


def test_int_is_accepted_for_a_float_field() -> None:
    cfg = load_config(None, ["train.outer_lr=1", "algorithm.inner_lr=2"])
    assert cfg.train.outer_lr == 1.0 and isinstance(cfg.train.outer_lr, float)
    assert cfg.algorithm.inner_lr == 2.0 and isinstance(cfg.algorithm.inner_lr, float)


@pytest.mark.parametrize("value", ["true", "false", "yes"])
def test_bool_is_rejected_for_an_int_field(value: str) -> None:
    message = config_error([f"task.ways={value}"])
    assert "task.ways" in message and "expected an integer" in message


def test_bool_is_rejected_for_a_float_field() -> None:
    assert "expected a number" in config_error(["train.outer_lr=true"])


def test_float_is_rejected_for_an_int_field() -> None:
    message = config_error(["task.shots=1.5"])
    assert "task.shots = 1.5" in message and "expected an integer" in message


def test_string_is_rejected_for_a_bool_field() -> None:
    assert "true or false" in config_error(["algorithm.first_order=maybe"])
    assert load_config(None, ["algorithm.first_order=true"]).algorithm.first_order is True


@pytest.mark.parametrize("value", ["no", "off", "yes", "123", "null"])
def test_unquoted_non_string_for_a_string_field_says_to_quote_it(value: str) -> None:
    message = config_error([f"train.name={value}"])
    assert "train.name" in message and "expected a string" in message and "quote it" in message


def test_quoted_no_is_a_string() -> None:
    assert load_config(None, ["train.name='no'"]).train.name == "no"


def test_optional_fields_accept_null(tmp_path: Path) -> None:
    cfg = load_config(None, ["finetune.adapt_steps=3", "finetune.adapt_lr=0.1", "eval.queries=2"])
    assert (cfg.finetune.adapt_steps, cfg.finetune.adapt_lr, cfg.eval.queries) == (3, 0.1, 2)
    cfg = load_config(None, ["finetune.adapt_steps=null", "finetune.adapt_lr=~", "eval.queries="])
    assert cfg.finetune.adapt_steps is None and cfg.finetune.adapt_lr is None and cfg.eval.queries is None
    cfg = load_config(write_yaml(tmp_path, "finetune:\n  adapt_steps: null\n  adapt_lr: 0.5\n"))
    assert cfg.finetune.adapt_steps is None and cfg.finetune.adapt_lr == 0.5


def test_optional_field_type_error_mentions_null() -> None:
    message = config_error(["finetune.adapt_steps=abc"])
    assert "finetune.adapt_steps" in message and "expected an integer or null" in message


def test_optional_field_keeps_its_range() -> None:
    message = config_error(["finetune.adapt_lr=0"])
    assert "finetune.adapt_lr" in message and "> 0" in message


def test_section_given_a_scalar_is_rejected() -> None:
    message = config_error(["task=5"])
    assert "task = 5" in message and "section" in message


# ---------------------------------------------------------------------------------------------
# unknown keys


@pytest.mark.parametrize(
    ("override", "path", "close"),
    [
        ("task.shot=1", "task.shot", "task.shots"),
        ("train.outer_rl=0.1", "train.outer_rl", "train.outer_lr"),
        ("data.glyphs.sed=1", "data.glyphs.sed", "data.glyphs.seed"),
        ("algorithm.inner_step=2", "algorithm.inner_step", "algorithm.inner_steps"),
    ],
)
def test_unknown_key_names_the_path_and_closest_key(override: str, path: str, close: str) -> None:
    message = config_error([override])
    assert f"unknown config key '{path}'" in message
    assert f"did you mean '{close}'" in message


def test_misspelled_section_names_the_full_path_and_closest_key() -> None:
    message = config_error(["algoritm.inner_lr=0.1"])
    assert "'algoritm.inner_lr'" in message
    assert "'algorithm.inner_lr'" in message


def test_misspelled_section_is_still_rejected() -> None:
    message = config_error(["algoritm.inner_lr=0.1"])
    assert "unknown config key 'algoritm" in message


def test_unknown_key_in_a_yaml_file(tmp_path: Path) -> None:
    message = config_error([], write_yaml(tmp_path, "task:\n  shot: 1\n"))
    assert "'task.shot'" in message and "'task.shots'" in message


def test_unknown_key_without_a_close_match_points_to_the_key_list() -> None:
    message = config_error(["zzzzzzzzzzzz.qqqqqqqqq=1"])
    assert "unknown config key 'zzzzzzzzzzzz" in message
    assert "metafew config" in message


def test_override_below_a_value_is_an_unknown_key() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'task\.shots\.x'"):
        parse_overrides(["task.shots=1", "task.shots.x=2"])


# ---------------------------------------------------------------------------------------------
# ranges, choices and consistency


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("task.ways=1", "task.ways = 1: must be >= 2"),
        ("task.shots=0", "task.shots = 0: must be >= 1"),
        ("task.queries=0", "task.queries = 0: must be >= 1"),
        ("algorithm.inner_lr=0", "algorithm.inner_lr = 0.0: must be > 0"),
        ("algorithm.inner_lr=-0.5", "algorithm.inner_lr = -0.5: must be > 0"),
        ("train.outer_lr=0", "train.outer_lr = 0.0: must be > 0"),
        ("train.outer_lr=-1e-3", "train.outer_lr = -0.001: must be > 0"),
        ("model.layers=9", "model.layers = 9: must be <= 8"),
        ("data.image_size=3", "data.image_size = 3: must be >= 4"),
        ("data.channels=4", "data.channels = 4: must be <= 3"),
    ],
)
def test_range_errors_name_field_value_and_bound(override: str, expected: str) -> None:
    assert expected in config_error([override])


def test_bounds_themselves_are_accepted() -> None:
    cfg = load_config(
        None, ["task.ways=2", "task.shots=1", "model.layers=8", "model.pool=stride", "train.val_every=0"]
    )
    assert (cfg.task.ways, cfg.task.shots, cfg.model.layers, cfg.train.val_every) == (2, 1, 8, 0)


@pytest.mark.parametrize(
    ("size", "layers", "pool", "ok"),
    [
        (16, 4, "max", True),
        (15, 4, "max", False),
        (8, 4, "max", False),
        (8, 4, "stride", True),
        (28, 5, "max", False),
    ],
)
def test_image_too_small_for_the_depth_is_refused_at_load(
    size: int, layers: int, pool: str, ok: bool
) -> None:
    args = [f"data.image_size={size}", f"model.layers={layers}", f"model.pool={pool}"]
    if ok:
        assert load_config(None, args).model.layers == layers
    else:
        assert f"data.image_size = {size} is too small" in config_error(args)


def test_channels_two_is_rejected() -> None:
    message = config_error(["data.channels=2"])
    assert "data.channels = 2" in message and "1" in message and "3" in message


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("runtime.batching=vamp", "vmap"),
        ("eval.norm=suport", "support"),
        ("model.pool=maxx", "max"),
        ("data.dataset=glyph", "glyphs"),
    ],
)
def test_choice_errors_list_choices_and_suggest(override: str, suggestion: str) -> None:
    message = config_error([override])
    key, value = override.split("=")
    assert f"{key} = '{value}'" in message
    assert "must be one of" in message
    assert f"did you mean '{suggestion}'" in message


def test_choice_error_lists_all_choices() -> None:
    assert "must be one of auto, fused, loop, vmap" in config_error(["runtime.batching=vamp"])


def test_folder_dataset_needs_a_root() -> None:
    message = config_error(["data.dataset=folder"])
    assert "data.root" in message
    cfg = load_config(None, ["data.dataset=folder", "data.root=somewhere"])
    assert cfg.data.root == "somewhere"


def test_from_dict_rejects_non_mapping() -> None:
    with pytest.raises(ConfigError, match="mapping"):
        from_dict([1, 2])  # type: ignore[arg-type]


def test_config_error_exit_code() -> None:
    assert ConfigError.exit_code == 2
    with pytest.raises(ConfigError) as info:
        from_dict({"task": {"ways": 1}})
    assert info.value.exit_code == 2


# ---------------------------------------------------------------------------------------------
# round trip and documentation


def _non_default_config() -> Config:
    return load_config(
        None,
        [
            "data.dataset=folder",
            "data.root=/some/where",
            "data.channels=3",
            "data.glyphs.seed=7",
            "task.shots=1",
            "algorithm.inner_lr=0.01",
            "algorithm.first_order=true",
            "train.outer_lr=1e-5",
            "runtime.batching=vmap",
            "train.name='no'",
            "finetune.lr=2.5e-3",
            "eval.norm=support",
        ],
    )


@pytest.mark.parametrize("cfg", [Config(), _non_default_config()], ids=["defaults", "changed"])
def test_dump_yaml_round_trips(cfg: Config) -> None:
    text = dump_yaml(cfg)
    assert from_dict(parse_yaml(text, "dumped")) == cfg
    assert from_dict(to_dict(cfg)) == cfg
    assert to_dict(cfg)["task"] == dataclasses.asdict(cfg.task)


def test_dump_yaml_round_trips_through_a_file(tmp_path: Path) -> None:
    cfg = _non_default_config()
    assert load_config(write_yaml(tmp_path, dump_yaml(cfg))) == cfg


@pytest.mark.parametrize("name", ["1e-3", "5e2"])
def test_dump_yaml_round_trips_number_like_strings(name: str) -> None:
    cfg = load_config(None, [f"train.name='{name}'"])
    assert cfg.train.name == name
    assert from_dict(parse_yaml(dump_yaml(cfg), "dumped")) == cfg


def test_valid_keys_are_dotted_and_unique() -> None:
    keys = valid_keys()
    assert len(keys) == len(set(keys))
    assert {"task.ways", "train.outer_lr", "data.glyphs.seed", "finetune.steps"} <= set(keys)
    assert "data.glyphs" not in keys and "task" not in keys


def test_describe_keys_covers_every_key_with_help() -> None:
    rows = describe_keys()
    assert [key for key, _, _ in rows] == valid_keys()
    defaults = to_dict(Config())
    for key, default, help_text in rows:
        assert isinstance(help_text, str) and help_text.strip(), key
        node = defaults
        for part in key.split("."):
            node = node[part]
        assert default == node, key


def test_every_field_has_help_metadata() -> None:
    def walk(cls: type) -> list[str]:
        missing = []
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                missing += walk(hints[f.name])
            elif not f.metadata.get("help", "").strip():
                missing.append(f"{cls.__name__}.{f.name}")
        return missing

    assert walk(Config) == []
    assert walk(DataConfig) == []
