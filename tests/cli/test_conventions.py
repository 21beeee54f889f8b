"""Command-line conventions: --version, shell completion, a `--help` that does not load torch."""

from __future__ import annotations

import subprocess
import sys

from helpers import ok

from metafew import __version__
from metafew.cli import data as data_cli


def test_version_flag_prints_the_package_version() -> None:
    result = ok("--version")
    assert result.stdout.strip() == f"metafew {__version__}"


def test_shell_completion_is_offered() -> None:
    assert "--install-completion" in ok("--help").stdout


def test_help_does_not_import_torch() -> None:
    """`metafew --help` and every command's --help import only the CLI layer (torch costs seconds)."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from metafew.cli import app\n"
        "for args in (['--help'], ['train', '--help'], ['predict', '--help'], ['data', 'check', '--help']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0, args\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_min_side_default_matches_the_loader() -> None:
    from metafew.data.folder import MIN_SIDE

    assert data_cli.MIN_SIDE == MIN_SIDE
