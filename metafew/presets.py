"""The experiment configs shipped inside the package (`metafew/configs/*.yaml`, the repository's
`configs/`): listed, copied out, and found by name, so that `--config maml_5w5s` (or the README's
`--config configs/maml_5w5s.yaml` outside a clone) works wherever metafew is installed. No torch
here: `metafew configs` and argument parsing stay fast."""

from __future__ import annotations

import shutil
from pathlib import Path

from metafew.errors import ConfigError

PRESETS_DIR = Path(__file__).parent / "configs"


def shipped() -> dict[str, Path]:
    """Preset name (file stem) -> its YAML file, sorted by name."""
    return {p.stem: p for p in sorted(PRESETS_DIR.glob("*.yaml"))}


def describe(path: Path) -> tuple[str, str]:
    """(the command on the file's first line, the comment that follows it as one line)."""
    command, words = "", []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if number == 0 and text.startswith("metafew "):
            command = text
        else:
            words.append(text)
    return command, " ".join(words)


def first_sentence(text: str) -> str:
    """The text up to its first full stop that ends a sentence (`e.g.`, `et al.` kept)."""
    for end in range(len(text)):
        if (
            text[end] == "."
            and text[end + 1 : end + 2] in ("", " ")
            and not text[:end].endswith(("e.g", " al"))
        ):
            return text[: end + 1]
    return text


def _unknown(spec: str) -> ConfigError:
    names = ", ".join(shipped())
    return ConfigError(
        f"config {spec!r} not found: no such file and no shipped preset of that name; give a path to "
        f"a YAML file or one of: {names} (metafew configs list)"
    )


def resolve(spec: str | Path) -> Path:
    """The YAML file a `--config` value names: an existing path as given; otherwise a shipped
    preset by name (`maml_5w5s`, `maml_5w5s.yaml`) or by the repository's path
    (`configs/maml_5w5s.yaml`, for README commands run outside a clone)."""
    path = Path(spec)
    if path.exists():
        return path
    name = path.name.removesuffix(".yaml").removesuffix(".yml")
    bare = path.parent == Path(".")
    if (bare or path.parent.name == "configs") and name in shipped():
        return shipped()[name]
    if not bare and path.parent.name != "configs":
        raise ConfigError(
            f"config file {str(spec)!r} not found: check the path (shipped presets: metafew configs list)"
        )
    raise _unknown(str(spec))


def copy(name: str, dest: Path, force: bool = False) -> Path:
    """Copy shipped preset `name` to `dest` (a file, or a folder to put `<name>.yaml` in) and
    return the file written; an existing file is kept unless `force`."""
    presets = shipped()
    key = name.removesuffix(".yaml")
    if key not in presets:
        raise _unknown(name)
    target = dest / f"{key}.yaml" if dest.is_dir() else dest
    if target.exists() and not force:
        raise ConfigError(f"{target} exists: choose another destination or pass --force to overwrite it")
    if not target.parent.is_dir():
        raise ConfigError(f"folder {str(target.parent)!r} does not exist: create it first")
    try:
        shutil.copyfile(presets[key], target)
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target
