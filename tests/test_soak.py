"""`bench soak` in short: a live session on a looping stream whose sender and broker are
restarted under it. The hour is a benchmark (docs/live.md); this checks the harness and
that the session comes through both restarts with nothing lost on the broker side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipelines.bench.soak import Sample, rss_svg, turns_sent
from tests.broker import require_mosquitto
from tests.conftest import MOUTH, ROOT

# MOUTH: the harness, not the speaker model: mouth motion leaves the 2 cores room for the
# sender, the broker and a test beside it.


def test_turns_sent_counts_each_loop_once_its_end_has_gone_out() -> None:
    ends = [3.0, 10.0]
    assert turns_sent(ends, period=12.0, sent=4.9) == 0
    assert turns_sent(ends, period=12.0, sent=5.0) == 1
    assert turns_sent(ends, period=12.0, sent=12.0) == 2
    assert turns_sent(ends, period=12.0, sent=17.0) == 3  # 3 s into the second loop, +2
    assert turns_sent(ends, period=12.0, sent=36.0) == 6


def test_the_rss_plot_is_an_svg_with_one_point_per_sample() -> None:
    samples = [Sample(t=t, rss_mb=500 + t / 10, open_files=20, turns=0, predictions=0,
                      latency_p50_s=None, speaker_model="light_asd") for t in (0, 60, 120)]
    svg = rss_svg(samples, {"rss_slope_mb_per_hour": 360.0})
    assert svg.startswith("<svg") and "360.0 MB/h" in svg
    points = svg.split('points="')[1].split('"')[0].split()
    assert len(points) == 3


def test_a_short_soak_survives_a_sender_and_a_broker_restart(tmp_path: Path) -> None:
    require_mosquitto()
    config = tmp_path / "live.yaml"
    config.write_text(MOUTH)
    out = tmp_path / "soak"
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "bench", "soak", "--minutes", "1.2",
         "--sender-every", "0.5", "--broker-every", "0.7", "--sample-every", "3",
         "--config", str(config), "--no-asr", "--out-dir", str(out), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["session_lasted"] is True
    assert figures["sender_restarts_survived"] == 2
    assert figures["broker_restarts_survived"] == 1
    assert figures["exit_code"] == 130, "ended by the benchmark's Ctrl-C, nothing else"
    # Each restart may cut a turn in two, or cut one off before its end went out.
    assert abs(figures["turns_received"] - figures["turns_sent"]) <= 2 + 1
    assert figures["turns_received"] >= 12, "two loops' worth of the demo"
    assert figures["lost_on_broker"] == 0
    assert figures["turns_on_broker"] == figures["turns_received"]
    assert figures["predictions_on_broker"] == figures["predictions"] == figures[
        "turns_received"]
    log = (out / "live.log").read_text()
    assert "timestamps jumped back" in log, "each sender restart is a jump back"
    rows = (out / "samples.csv").read_text().splitlines()
    assert rows[0].startswith("t,rss_mb,open_files") and len(rows) >= 10
    assert (out / "rss.svg").read_text().startswith("<svg")
    assert "| session_lasted | True |" in (out / "figures.md").read_text()
