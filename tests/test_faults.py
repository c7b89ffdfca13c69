"""Faults and hostile input: each case as a user meets it, through the command line.

The table of cases (input -> exit code -> message -> what is kept) is in
docs/operations.md, "Bad input and faults"; every row is checked here.
"""

from __future__ import annotations

import itertools
import json
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from pipelines.run.replay import Collect
from stream.audio.vad import VadConfig, VadStage
from stream.events import turn_schema
from stream.frames import AudioChunk, SpeechSegment
from stream.runtime import Pipeline, Source
from tests.conftest import (
    DEMO,
    ROOT,
    SHORT_TURNS,
    run_cli,
    signalled_after_first_line,
    start_cli,
    turn_events,
)
from tests.media import RATE, tone_track

SRT = ROOT / "examples" / "demo.srt"


def _ffmpeg(*args: str) -> None:
    exe = shutil.which("ffmpeg")
    if exe is None:
        pytest.fail("ffmpeg is needed to cut media (.ci/run installs it)")
    subprocess.run([exe, "-y", "-hide_banner", "-loglevel", "error", *args], check=True,
                   timeout=120)


def _one_line(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert result.returncode == code, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("socialstream: error")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# -- audio that ends during speech -------------------------------------------------------

def test_audio_that_ends_during_speech_loses_no_turn(tmp_path: Path) -> None:
    cut = tmp_path / "cut.mp4"
    _ffmpeg("-i", str(DEMO), "-c:v", "copy", "-af", "atrim=end=15.5", "-c:a", "aac", str(cut))
    done = run_cli("replay", str(cut), "--transcript", str(SRT), "--json")
    assert done.returncode == 0, done.stderr
    events = turn_events(done.stdout)
    lines = [ln for ln in SRT.read_text().splitlines() if ln and ln[0].isalpha()]
    assert [e["text"] for e in events if e["text"]] == lines  # every word, once, in order
    # The speech cut by the end of the audio closes where the audio ends, let go one
    # hangover later (its line, which ends later still, comes as a turn of its own); later
    # turns come from the transcript alone.
    spoken = [e for e in events if e["origin"] == "speech"]
    assert len(spoken) == 6 and 15.5 <= spoken[-1]["end"] <= 15.56
    assert spoken[-1]["closed_by"] == "end" and spoken[-1]["text"] == ""
    jsonschema.validate(spoken[-1], turn_schema())
    held = VadConfig().hangover_s + VadConfig().frame_s  # as long as a line's claim waits
    assert 15.5 + held < spoken[-1]["emitted_at"] <= 15.56 + held + 1 / 30  # a frame at 30/s
    assert all(e["origin"] == "transcript" for e in events if e["start"] > 15.5)


def test_an_mpeg_ts_cut_in_half_keeps_what_came_before(tmp_path: Path) -> None:
    ts = tmp_path / "demo.ts"
    _ffmpeg("-i", str(DEMO), "-c", "copy", "-f", "mpegts", str(ts))
    data = ts.read_bytes()
    half = tmp_path / "half.ts"
    half.write_bytes(data[: len(data) // 2 // 188 * 188])
    done = run_cli("replay", str(half), "--transcript", str(SRT), "--json")
    assert done.returncode == 0, done.stderr
    assert len(turn_events(done.stdout)) >= 5


class _Audio(Source):
    """Speech until 2.0 s, then the media goes on without audio (watermarks only)."""

    name = "media"

    async def items(self):  # type: ignore[override]
        from stream.frames import Watermark

        track = (tone_track([(0.5, 2.0)], 2.0) * 32767).astype(np.int16)
        for at in range(0, len(track), 1600):
            yield AudioChunk(pts=at / RATE, samples=track[at: at + 1600], source=self.name)
        for step in range(1, 60):
            yield Watermark(pts=2.0 + step * 0.1, source=self.name)


async def test_vad_closes_open_speech_at_its_own_last_time() -> None:
    pipe = Pipeline()
    pipe.add(_Audio())
    pipe.add(VadStage(VadConfig()))
    seen = Collect((SpeechSegment,), name="segments")
    pipe.add(seen)
    pipe.connect("media", "vad", AudioChunk)
    pipe.connect("vad", "segments", SpeechSegment)
    await pipe.run()  # used to fail: "emitted SpeechSegment at 2.000s after ... 7.900s"
    segments = [i for i in seen.items if isinstance(i, SpeechSegment)]
    assert len(segments) == 1
    assert abs(segments[0].start - 0.5) < 0.05 and segments[0].end <= 2.0
    assert segments[0].pts <= 3.5  # closed once the audio had been gone a while, not at EOS


# -- outputs that are inputs ---------------------------------------------------------------

def test_an_output_that_is_an_input_is_refused(tmp_path: Path) -> None:
    media = tmp_path / "demo.mp4"
    shutil.copy(DEMO, media)
    srt = tmp_path / "demo.srt"
    shutil.copy(SRT, srt)
    before = media.read_bytes()
    _one_line(run_cli("replay", str(media), "--out", str(media)), 2, "--out", "is an input")
    assert media.read_bytes() == before
    _one_line(run_cli("replay", str(media), "--out", str(srt)), 2, "is an input")
    assert srt.read_text() == SRT.read_text()


def test_our_own_output_beside_the_media_is_not_read_as_its_transcript(
        short_demo: Path, tmp_path: Path) -> None:
    media = tmp_path / "demo.mp4"
    shutil.copy(short_demo, media)
    shutil.copy(short_demo.with_suffix(".srt"), tmp_path / "demo.srt")
    first = run_cli("replay", str(media), "--json", "--out", str(tmp_path / "demo.jsonl"))
    again = run_cli("replay", str(media), "--json")
    assert first.returncode == again.returncode == 0, again.stderr
    said = "".join(again.stderr.split())  # the log wraps long lines, even inside a word
    assert "demo.jsonlissocialstream'sowneventoutput" in said and "demo.srt" in said
    texts = [e["text"] for e in turn_events(again.stdout)]
    assert texts == [e["text"] for e in turn_events(first.stdout)]
    bad = run_cli("replay", str(media), "--transcript", str(tmp_path / "demo.jsonl"))
    _one_line(bad, 2, "demo.jsonl", "socialstream's own event output")


# -- writes that fail -------------------------------------------------------------------------

def test_a_file_size_limit_keeps_whole_lines_and_names_the_file(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (6000, 6000))

    done = run_cli("replay", str(DEMO), "--json", "--out", str(out), preexec_fn=limit)
    _one_line(done, 2, str(out), "File too large")
    kept = out.read_text().splitlines()
    assert kept and all(json.loads(line)["schema"] for line in kept)  # whole lines only
    assert out.stat().st_size <= 6000


# -- numbers that are not numbers ---------------------------------------------------------------

def test_non_finite_and_boolean_times_are_rejected_at_the_reader(tmp_path: Path) -> None:
    from stream.sources.mqtt_inbox import parse_line
    from stream.transcript.readers import read_transcript

    path = tmp_path / "t.jsonl"
    path.write_text('{"start": 1, "end": Infinity, "text": "a"}\n'
                    '{"start": true, "end": 2, "text": "b"}\n'
                    '{"start": NaN, "end": 2, "text": "c"}\n'
                    '{"start": 1, "end": 2, "text": "ok"}\n')
    transcript = read_transcript(path)
    assert [line.text for line in transcript.lines] == ["ok"]
    assert [p.origin.rsplit(":", 1)[1] for p in transcript.problems] == ["1", "2", "3"]
    assert parse_line('{"start": 1, "end": Infinity, "text": "a"}', "m") is None
    assert parse_line('{"start": true, "end": 2, "text": "a"}', "m") is None
    assert parse_line('{"start": 1, "end": 2, "text": "a"}', "m") is not None


def test_event_writers_refuse_non_finite_numbers() -> None:
    from stream.events import dumps

    with pytest.raises(ValueError, match="Out of range float"):
        dumps({"end": float("inf")})


# -- ids -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("session", ["a#b", "a+b", "a/b", ""])
def test_session_ids_must_be_topic_safe(session: str) -> None:
    _one_line(run_cli("replay", str(DEMO), "--session", session), 2, "--session")


def test_sessions_never_share_a_spool(tmp_path: Path) -> None:
    from stream.broker import MqttConfig
    from stream.sinks.mqtt import spool_path

    config = MqttConfig(url="mqtt://127.0.0.1:1", spool_dir=tmp_path)
    paths = {spool_path(config, s) for s in ("a_b", "a b", "a.b", "a-b", "A_b")}
    assert len(paths) == 5 and all(p.parent == tmp_path for p in paths)


def test_event_ids_are_unique_across_runs(short_demo: Path) -> None:
    runs = [turn_events(run_cli("replay", str(short_demo), "--json").stdout) for _ in range(2)]
    ids = [[e["id"] for e in events] for events in runs]
    assert len(set(ids[0])) == SHORT_TURNS and not set(ids[0]) & set(ids[1])
    assert ids[0][0].startswith("demo/") and ids[0][0].endswith("/turn/0")
    assert runs[0][0]["run"] != runs[1][0]["run"]
    # Everything but the run is the same: replays still compare.
    strip = [[{k: v for k, v in e.items() if k not in ("id", "run")} for e in r] for r in runs]
    assert strip[0] == strip[1]


# -- hostile MQTT payloads -------------------------------------------------------------------

def test_a_hostile_transcript_payload_is_one_warning(caplog) -> None:
    from stream.broker import MqttConfig
    from stream.sources.mqtt_inbox import MqttInbox

    inbox = MqttInbox(MqttConfig(url="mqtt://127.0.0.1:1"), "s", clock=lambda: 0.0)
    inbox._handle("socialstream/s/transcript/in", "[" * 3000)
    inbox._handle("socialstream/s/transcript/in", '{"text": "' + "x" * 100_000 + '"}')
    inbox._handle("socialstream/s/transcript/in", '{"start": 1, "end": 2, "text": "fine"}')
    assert inbox.rejected == 2 and inbox.received == 1
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2 and all("Traceback" not in r.getMessage() for r in warnings)


def test_gaps_in_numbered_transcript_lines_are_counted(caplog) -> None:
    from stream.broker import MqttConfig
    from stream.sources.mqtt_inbox import MqttInbox

    inbox = MqttInbox(MqttConfig(url="mqtt://127.0.0.1:1"), "s", clock=lambda: 0.0)
    for seq in (1, 2, 5, 6, 9):
        inbox._handle("socialstream/s/transcript/in",
                      json.dumps({"start": seq, "end": seq + 0.5, "text": "w", "seq": seq}))
    assert inbox.received == 5 and inbox.missing == 4
    assert "4 transcript lines never arrived" in inbox.summary()


# -- errors that name the right thing --------------------------------------------------------

def test_config_errors_name_the_flag_the_file_or_the_bytes(tmp_path: Path) -> None:
    line = _one_line(run_cli("replay", str(DEMO), "--video-fps", "0"), 2, "--video-fps:")
    assert "defaults" not in line
    _one_line(run_cli("replay", str(DEMO), "--speed", "-1"), 2, "--speed:")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"# r\xe9glages\nsource:\n  realtime: false\n")
    _one_line(run_cli("replay", str(DEMO), "--config", str(latin)), 2,
              f"{latin}:1: not UTF-8 text (byte 0xe9)")
    zero = tmp_path / "zero.yaml"
    zero.write_text("source:\n  video_size: [0, 0]\n")
    _one_line(run_cli("replay", str(DEMO), "--config", str(zero)), 2,
              f"{zero}: source.video_size.0:", "greater than 0")


def test_a_plain_mp4_on_a_pipe_asks_for_a_streamable_container() -> None:
    with DEMO.open("rb") as media:
        done = run_cli("replay", "-", "--json", stdin=media)
    _one_line(done, 2, "-: ", "pipe a streamable container", "MPEG-TS")


def test_a_truncated_mp4_that_still_decodes_says_so(tmp_path: Path) -> None:
    fast = tmp_path / "fast.mp4"
    _ffmpeg("-i", str(DEMO), "-c", "copy", "-movflags", "+faststart", str(fast))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(fast.read_bytes()[: fast.stat().st_size * 6 // 10])
    done = run_cli("replay", str(cut), "--json", "--no-asr")  # the media, not its words
    assert done.returncode == 0, done.stderr
    said = "".join(done.stderr.split())  # the log wraps long lines, even inside a word
    assert "butthecontainersaysitlasts33.7s:thefilemaybetruncated" in said
    assert "themediaendedat19.8softhe33.7sitscontainerannounces" in said
    assert turn_events(done.stdout)  # what it held is still used


# -- live inputs that are not there ---------------------------------------------------------

def test_a_camera_that_is_not_there_is_one_line() -> None:
    _one_line(run_cli("live", "/dev/video9", "--give-up", "2", "--no-asr"), 2,
              "/dev/video9: no such camera")


def test_a_stream_that_never_sends_is_an_error_at_give_up() -> None:
    from tests.broker import free_port

    done = run_cli("live", f"tcp://127.0.0.1:{free_port()}", "--give-up", "2", "--no-asr")
    _one_line(done, 2, "no data before giving up after 2.0s")


# -- signals -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("number", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_drain_like_ctrl_c(tmp_path: Path, number: int, code: int) -> None:
    out = tmp_path / "events.jsonl"
    returncode, printed, stderr = signalled_after_first_line(
        number, "replay", str(DEMO), "--json", "--speed", "4", "--out", str(out))
    assert returncode == code, stderr
    turns = turn_events(printed)
    assert 1 <= len(turns) < 12 and out.read_text().splitlines() == printed
    # The demo's lines do not overlap; speech cut at the stop is one turn with its line.
    assert all(a["end"] <= b["start"] and b["text"] for a, b in itertools.pairwise(turns))
    assert "draining what is in flight" in stderr and "stage metrics" in stderr


def test_ctrl_c_cuts_the_mqtt_drain_short(tmp_path: Path) -> None:
    from tests.broker import free_port

    config = tmp_path / "slow.yaml"  # a broker that is not there, and a patient drain
    config.write_text(f"mqtt:\n  drain_timeout_s: 60\n  spool_dir: {tmp_path}\n")
    proc = start_cli("replay", str(DEMO), "--json", "--mqtt", f"mqtt://127.0.0.1:{free_port()}",
                "--config", str(config))
    lines = []
    assert proc.stdout is not None
    while len(lines) < 24:  # every turn and prediction is out: now waiting for the broker
        lines.append(proc.stdout.readline())
    time.sleep(1.0)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 5.0
    assert proc.returncode == 130, stderr
    assert "24eventskeptin" in "".join(stderr.split())  # 12 turns, 12 predictions


def test_a_stop_while_the_input_waits_for_a_sender_is_prompt() -> None:
    from tests.broker import free_port
    from tests.ports import wait_listening

    port = free_port()
    proc = start_cli("live", f"tcp://127.0.0.1:{port}", "--listen")
    wait_listening(port, proc, "tcp")  # started, blocked in the open that waits for a sender
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 2.5, stderr
    assert proc.returncode == 130, stderr


def test_emitted_at_never_lies_after_the_media_end(tmp_path: Path) -> None:
    from tests.media import write_media

    media = write_media(tmp_path / "short.mp4", duration=3.0)
    (tmp_path / "short.jsonl").write_text('{"start": 2.5, "end": 40.0, "text": "long"}\n')
    done = run_cli("replay", str(media), "--json")
    assert done.returncode == 0, done.stderr
    event = turn_events(done.stdout)[0]
    assert event["end"] == 40.0 and event["emitted_at"] <= 3.0


def test_a_second_ctrl_c_aborts_at_once_with_whole_lines(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    proc = start_cli("replay", str(DEMO), "--json", "--speed", "2", "--out", str(out),
                     text=False, bufsize=0)
    assert proc.stdout is not None
    proc.stdout.readline()  # the first turn is out: the run is under way (not a fixed wait)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)  # a second Ctrl-C as a hand gives it, while the first one drains
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=20)
    # 130 when the second one lands inside the run; ended by SIGINT itself when the drain
    # was already over and the interpreter was on its way out.
    assert proc.returncode in (130, -signal.SIGINT), stderr
    assert all(json.loads(line)["schema"] for line in out.read_text().splitlines())
