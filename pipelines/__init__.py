"""Compositions of stages (replay now; live and eval later) and the command line."""
