"""The command line as users run it: outputs, exit codes, one-line errors, Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import cli
from stream.frames import Prediction, Turn
from stream.sinks.jsonl import JsonlSink
from tests.conftest import (
    PREDICTION,
    ROOT,
    SHORT_TURNS,
    TURN,
    run_cli,
    signalled_after_first_line,
    start_cli,
    turn_events,
)


def _one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("socialstream: error: ")
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_json_mode_prints_only_events_on_stdout(short_demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    result = run_cli("replay", str(short_demo), "--json", "--out", str(out))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    events = [json.loads(ln) for ln in lines]
    expected = [(schema, n) for n in range(SHORT_TURNS) for schema in (TURN, PREDICTION)]
    assert [(e["schema"], e["turn"]) for e in events] == expected, "each turn, then its answers"
    assert all(e["predictor"] == "fusion" for e in events[1::2])
    assert out.read_text().splitlines() == lines
    assert "stage metrics" in result.stderr and f"{SHORT_TURNS} turns" in result.stderr


async def test_json_and_out_are_one_writer_so_they_agree_line_for_line(
        demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # One writer for both: the same lines in one order by construction (two sinks each
    # merged turns with unordered predictions on their own).
    out = tmp_path / "events.jsonl"
    args = cli._parser().parse_args(["replay", str(demo), "--json", "--out", str(out)])
    sinks = cli._sinks(args, cli._replay_config(args), "demo")
    writers = [sink for sink in sinks if isinstance(sink, JsonlSink)]
    assert writers == sinks and len(writers) == 1
    sink = writers[0]
    await sink.start()
    await sink.process(Turn(pts=1.0, index=0, start=0.0, end=0.8, text="hello"))
    await sink.process(Prediction(pts=1.2, turn=0, start=0.0, end=0.8, speaker=None,
                                  answers=(), latency_s=0.2))
    await sink.stop()
    printed = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["schema"] for line in printed] == [TURN, PREDICTION]
    assert out.read_text().splitlines() == printed


def test_human_mode_prints_readable_turns(short_demo: Path) -> None:
    result = run_cli("replay", str(short_demo))
    assert result.returncode == 0, result.stderr
    turn_lines = [ln for ln in result.stdout.splitlines() if ln.startswith("turn ")]
    assert len(turn_lines) == SHORT_TURNS and "Ben, did you finish the map" in turn_lines[0]


def test_corrupt_and_missing_media_fail_in_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00garbage" * 500)
    _one_line_error(run_cli("replay", str(broken), "--json"), "broken.mp4", "cannot open")
    _one_line_error(run_cli("replay", str(tmp_path / "gone.mp4")), "gone.mp4", "no such file")


def test_malformed_transcript_lines_are_skipped_and_counted(short_demo: Path,
                                                             tmp_path: Path) -> None:
    transcript = tmp_path / "t.srt"
    good = (short_demo.with_suffix(".srt")).read_text()
    transcript.write_text("1\n00:00:00,100 -> nonsense\nbroken cue\n\n" + good)
    result = run_cli("replay", str(short_demo), "--json", "--transcript", str(transcript))
    assert result.returncode == 0, result.stderr
    assert len(turn_events(result.stdout)) == SHORT_TURNS
    assert "1 malformed transcript line(s) skipped" in result.stderr
    assert f"{transcript}:2" in result.stderr


def test_config_errors_name_the_key_and_the_file(demo: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("vad:\n  hangover: 0.3\n")
    _one_line_error(run_cli("replay", str(demo), "--config", str(config)),
                    str(config), "vad.hangover: unknown key")
    config.write_text("vad:\n  aggressiveness: 9\n")
    _one_line_error(run_cli("replay", str(demo), "--config", str(config)),
                    str(config), "vad.aggressiveness")
    config.write_text("vad: [unclosed\n")
    _one_line_error(run_cli("replay", str(demo), "--config", str(config)), "not valid YAML")


def test_unwritable_output_is_a_user_error(demo: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    _one_line_error(run_cli("replay", str(demo), "--out", str(blocker / "x.jsonl")),
                    "cannot write events")


def test_a_full_disk_under_the_output_is_a_user_error_naming_it(demo: Path) -> None:
    # /dev/full opens, then fails every write: ENOSPC, as a disk that fills mid-run.
    done = run_cli("replay", str(demo), "--out", "/dev/full", "--json")
    _one_line_error(done, "/dev/full: writing events failed after 0 (No space left on device)")


def test_a_full_disk_under_the_annotated_video_is_the_same_one_line_error(
        demo: Path, tmp_path: Path) -> None:
    """--annotate on a full disk was a traceback with exit 1; --out's contract: exit 2,
    what failed after how much, and advice (then a crash: FFmpeg reused the failed muxer)."""
    full = tmp_path / "full.mp4"
    full.symlink_to("/dev/full")
    out = tmp_path / "events.jsonl"
    done = run_cli("replay", str(demo), "--annotate", str(full), "--out", str(out))
    _one_line_error(done, f"--annotate {full}: writing the video failed after")
    assert "free space or choose another file" in done.stderr


def test_a_closed_pipe_is_not_a_full_disk(demo: Path) -> None:
    """`| head -1`: the reader went away; there is no space to free."""
    with start_cli("replay", str(demo), "--json") as child:
        assert child.stdout is not None and child.stderr is not None
        child.stdout.readline()
        child.stdout.close()
        stderr = child.stderr.read()
        child.wait(timeout=120)
    assert child.returncode == 2, stderr
    assert "stdout: its reader closed it after" in stderr and "free space" not in stderr


def test_sigint_drains_and_flushes_what_was_produced(demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    returncode, printed, stderr = signalled_after_first_line(
        signal.SIGINT, "replay", str(demo), "--json", "--realtime", "--speed", "4",
        "--out", str(out))
    assert returncode == 130, stderr
    assert 1 <= len(turn_events(printed)) < 12
    assert out.read_text().splitlines() == printed
    assert "interrupted" in stderr and "stage metrics" in stderr


def test_bench_replay_reports_ratios_as_json(demo: Path) -> None:
    # The whole demo: on the short one decoding takes a third of a second, and the
    # figures' rounding (4 places) moves the ratio by more than its own 3 places.
    result = run_cli("bench", "replay", "--repeat", "1", "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["turns"] == 12
    assert figures["replay_rtf"] > 0 and figures["decode_rtf"] > 0
    assert abs(figures["replay_over_decode"] - figures["replay_s"] / figures["decode_s"]) < 0.01
    assert "asr" not in figures  # the recogniser is timed only when asked (--asr)


def test_bench_replay_paced_needs_asr() -> None:
    result = run_cli("bench", "replay", "--paced")
    assert result.returncode == 2 and "add --asr" in result.stderr


@pytest.mark.slow
def test_bench_view_pairs_each_view_with_a_plain_replay_per_round() -> None:
    media = ROOT / "examples" / "duo.mp4"
    result = run_cli("bench", "view", "--media", str(media), "--repeat", "2", "--json",
                     timeout=400)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    rounds = figures["web_over_plain_rounds"]
    assert len(rounds) == 2
    assert figures["web_over_plain"] == pytest.approx(sum(rounds) / 2, abs=0.001)
    assert figures["pictures_per_viewer"] > 0, "both viewers were sent pictures"
    for kind in ("annotate", "web"):
        assert figures[f"{kind}_rtf"] > 0 and figures[f"{kind}_cpu_over_plain"] > 0
    assert figures["plain_cpu_s"] > 0


def test_progress_bar_on_a_terminal_only(short_demo: Path) -> None:
    import os
    import pty

    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "replay", str(short_demo), "--json", "--realtime",
         "--speed", "8"], cwd=ROOT, stdout=subprocess.PIPE, stderr=follower, env=env)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(timeout=60)
    os.close(leader)
    assert proc.returncode == 0
    assert b"replaying demo.mp4" in seen and b"s media" in seen
    piped = run_cli("replay", str(short_demo), "--json")
    assert "replaying" not in piped.stderr


def test_media_from_a_pipe(short_demo: Path, tmp_path: Path) -> None:
    import av

    stream_file = tmp_path / "demo.ts"
    with av.open(str(short_demo)) as src, av.open(str(stream_file), "w", format="mpegts") as dst:
        mapping = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is None:
                continue
            packet.stream = mapping[packet.stream.index]
            dst.mux(packet)
    with stream_file.open("rb") as stdin:
        result = run_cli("replay", "-", "--json", "--transcript",
                         str(short_demo.with_suffix(".srt")), stdin=stdin)
    assert result.returncode == 0, result.stderr
    events = turn_events(result.stdout)
    assert len(events) == SHORT_TURNS and events[0]["session"] == "stdin"
    assert all(e["origin"] == "speech" and e["text"] for e in events), "pipe timestamps line up"


def test_verbosity_is_taken_before_or_after_the_subcommand() -> None:
    from pipelines.cli import _parser

    parse = _parser().parse_args
    assert parse(["replay", "x.mp4"]).verbose == 0
    assert parse(["-v", "replay", "x.mp4"]).verbose == 1
    assert parse(["replay", "x.mp4", "-vv"]).verbose == 2
    assert parse(["live", "udp://h:1", "-v"]).verbose == 1
    assert parse(["bench", "replay", "-vv"]).verbose == 2
