"""Every config key, attacked the same ways (issue 15's adversarial pass, made systematic): a value of
the wrong type, a value just outside its range, a name outside its choices, an integer past 2^31.
Each must be refused by `metafew config KEY=VALUE` with exit code 2 and exactly one line that
names the key: no traceback, whatever the key. The cases are generated from the schema, so a
new key is covered the day it is added."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import pytest
from helpers import assert_user_error, invoke

from metafew.config import Config
from metafew.config_load import INT_MAX, choices_of

pytestmark = pytest.mark.bad_input


def _leaves(cls: type = Config, prefix: str = "") -> list[tuple[str, Any, dict[str, Any]]]:
    """(dotted key, type, field metadata) of every leaf field of the schema."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += _leaves(tp, f"{prefix}{f.name}.")  # type: ignore[arg-type]
        else:
            out.append((prefix + f.name, tp, dict(f.metadata)))
    return out


def _base(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


WRONG_TYPE = {bool: "maybe", int: "abc", float: "abc", str: "5"}
"""A YAML value of another type for each field type (`5` is an integer to YAML, not a string)."""


def _cases() -> list[tuple[str, str]]:
    cases = []
    for key, tp, meta in _leaves():
        base = _base(tp)
        cases.append((key, WRONG_TYPE[base]))
        if base in (int, float):
            step = 1 if base is int else 0.5
            if meta.get("ge") is not None:
                cases.append((key, str(meta["ge"] - step)))
            if meta.get("gt") is not None:
                cases.append((key, str(meta["gt"])))
            if meta.get("le") is not None:
                cases.append((key, str(meta["le"] + step)))
        if base is int:
            cases.append((key, str(INT_MAX + 1)))
        if base is str and choices_of(meta):
            cases.append((key, "no_such_choice"))
    return cases


CASES = _cases()


def test_the_sweep_covers_every_key() -> None:
    assert {key for key, _ in CASES} == {key for key, _, _ in _leaves()}
    assert len(CASES) >= 150


@pytest.mark.parametrize(("key", "value"), CASES, ids=[f"{k}={v}" for k, v in CASES])
def test_a_bad_value_for_any_key_is_refused_in_one_line(key: str, value: str) -> None:
    assert_user_error(invoke("config", f"{key}={value}"), 2, key)
