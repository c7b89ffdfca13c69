"""`socialstream bench engine` runs end to end on the tiny model and reports its figures."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_engine_reports_ratios_ending_with_the_three_goals() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "bench", "engine", "--shape", "tiny",
         "--turns", "5", "--baseline-every", "5", "--json"],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert list(figures)[-3:] == ["speedup_last_turn", "flatness", "bias_overhead"]
    assert len(figures["incremental_s"]) == len(figures["plain_s"]) == 5
    assert set(figures["reencode_s"]) == {"3", "5"}
    # Re-encoding at turn 5 processes the whole history: several times the tokens of one turn.
    assert figures["token_ratio_last_turn"] > 3
    # Its speed-up is a timing, reported by the benchmark, not asserted here: a loaded
    # machine read 0.42 with a tiny model.
    assert figures["speedup_last_turn"] > 0
    assert 0 < figures["active_head_share"] <= 1


def test_bench_engine_rejects_too_few_turns() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "bench", "engine", "--shape", "tiny",
         "--turns", "2"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0 and "--turns must be >= 3" in done.stderr
