"""Compositions of stages and the command line: `run/` what a user runs, `evaluation/`
the scores, `bench/` the speed figures, `cli.py` the command line that wires them."""
