"""The README says what the code does: its reference table of config keys is the generated one,
and the commands it names exist."""

from __future__ import annotations

import re

from helpers import REPO

from metafew.cli import app
from metafew.config_load import keys_markdown

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_the_key_table_is_the_one_the_code_generates() -> None:
    """Regenerate with `metafew config --keys --markdown` between the keys:begin/end markers."""
    table = README.split("<!-- keys:begin -->\n", 1)[1].split("<!-- keys:end -->", 1)[0]
    assert table == keys_markdown()


def test_every_metafew_command_in_the_readme_exists() -> None:
    names = {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}
    names |= {g.name for g in app.registered_groups if g.name}
    used = set(re.findall(r"(?m)(?:^|`|\$ )metafew ([a-z][a-z-]*)", README))
    assert used and used <= names, used - names
