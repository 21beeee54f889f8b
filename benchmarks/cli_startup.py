"""How long the CLI takes to answer: `metafew --help`, `metafew train --help` and `metafew
--version` (median of N runs each, as a user types them), and `metafew train --fast-dev-run` on
the README's main config (once). Run alone on the machine for numbers worth quoting:

    python benchmarks/cli_startup.py [--repeat 7] [--config maml_5w5s]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--config", default="maml_5w5s")
    args = parser.parse_args()
    metafew = shutil.which("metafew") or sys.exit("metafew is not on PATH: activate the venv")
    for extra in (["--help"], ["train", "--help"], ["--version"]):
        times = [seconds([metafew, *extra]) for _ in range(args.repeat)]
        print(
            f"metafew {' '.join(extra):<14} median {statistics.median(times):.2f} s over {args.repeat} runs"
        )
    fast = seconds([metafew, "train", "--config", args.config, "--fast-dev-run"])
    print(f"metafew train --config {args.config} --fast-dev-run: {fast:.1f} s")


if __name__ == "__main__":
    main()
