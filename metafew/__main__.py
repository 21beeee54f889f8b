"""`python -m metafew` runs the command-line interface."""

from metafew.cli import main

main()
