"""Live sessions: the demo pushed by ffmpeg over loopback, stalls, input choices."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.config import load_config
from pipelines.run.live import LivePipelineConfig, build_live, live_inputs
from stream.errors import UserError
from stream.frames import (
    AudioChunk,
    PerceivedFrame,
    Transcribed,
    TranscriptLine,
    VideoFrame,
    Word,
)
from tests.broker import free_port
from tests.conftest import MOUTH, ROOT, SHORT_TURNS, run_cli, turn_events
from tests.ports import wait_listening

DEMO = ROOT / "examples" / "demo.mp4"


def _ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        pytest.fail("ffmpeg is needed to push a live stream (.ci/run installs it)")
    return exe


def _udp(port: int) -> str:
    return f"udp://127.0.0.1:{port}?fifo_size=1000000&overrun_nonfatal=1"


def _push(port: int, *args: str) -> None:
    subprocess.run([_ffmpeg(), "-hide_banner", "-loglevel", "error", "-readrate", "2", *args,
                    "-c", "copy", "-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316"],
                   check=True, timeout=120)


def _live(port: int, tmp_path: Path, give_up: float, stall: float = 3.0,
          url: str | None = None, *extra: str) -> subprocess.Popen[str]:
    config = tmp_path / "live.yaml"
    config.write_text(f"live:\n  stall_timeout_s: {stall}\n  reconnect_min_s: 0.2\n"
                      f"  reconnect_max_s: 0.5\n{MOUTH}")
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "live", url or _udp(port), "--json",
         "--give-up", str(give_up), "--config", str(config), "--no-asr", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# MOUTH: these tests check the transport (a live feed gives the file's turns), not the
# speaker model: Light-ASD's real-time factor here (about 0.75 for the demo's 3 faces on 2
# cores) leaves no headroom beside ffmpeg pushing the stream, and a pipeline behind a live feed
# drops video by design, which changes the speakers. Its cost is in `bench perception`.
# For the same reason the recognizer is off (`--no-asr`): the turns, not their words.


def _assert_same_turns_as_the_file_replay(events: list[dict], tmp_path: Path,
                                          media: Path = DEMO, turns: int = 12) -> None:
    config = tmp_path / "replay.yaml"
    config.write_text(MOUTH)
    replayed = turn_events(run_cli("replay", str(media), "--json", "--config",
                                   str(config), "--no-asr").stdout)
    assert len(events) == len(replayed) == turns
    for got, want in zip(events, replayed, strict=True):
        assert abs(got["start"] - want["start"]) <= 0.02, "within one VAD frame"
        assert abs(got["end"] - want["end"]) <= 0.02
        assert got["speaker"] == want["speaker"]


def _pushed(tmp_path: Path, media: Path) -> tuple[str, str]:
    """A live session's stdout and stderr for `media` pushed once over UDP."""
    port = free_port()
    live = _live(port, tmp_path, give_up=3)
    wait_listening(port, live)
    _push(port, "-i", str(media))
    out, err = live.communicate(timeout=60)
    assert live.returncode == 0, err
    return out, err


def test_udp_live_stream_gives_the_file_replays_turns(short_demo: Path, tmp_path: Path) -> None:
    out, _ = _pushed(tmp_path, short_demo)
    _assert_same_turns_as_the_file_replay(turn_events(out), tmp_path, short_demo, SHORT_TURNS)


def test_rtsp_listener_gives_the_file_replays_turns(tmp_path: Path) -> None:
    # The whole demo: the RTSP sender's teardown loses the last few tenths of a second,
    # which on the short demo is the end of its last turn.
    port = free_port()
    url = f"rtsp://127.0.0.1:{port}/live"
    live = _live(port, tmp_path, 12, 3.0, url, "--listen")
    wait_listening(port, live, "tcp")
    subprocess.run([_ffmpeg(), "-hide_banner", "-loglevel", "error", "-readrate", "2", "-i",
                    str(DEMO), "-c", "copy", "-f", "rtsp", "-rtsp_transport", "tcp", url],
                   check=True, timeout=120)
    out, err = live.communicate(timeout=90)
    assert live.returncode == 0, err
    _assert_same_turns_as_the_file_replay(turn_events(out), tmp_path)


def test_a_stalled_stream_is_reconnected_and_the_session_goes_on(tmp_path: Path) -> None:
    port = free_port()
    live = _live(port, tmp_path, give_up=8, stall=1.5)
    wait_listening(port, live)
    _push(port, "-t", "14", "-i", str(DEMO))
    time.sleep(5.0)  # longer than the stall timeout
    _push(port, "-ss", "14", "-i", str(DEMO))
    out, err = live.communicate(timeout=90)
    assert live.returncode == 0, err
    reconnects = re.search(r"(\d+) reconnects", err)
    assert reconnects is not None and int(reconnects.group(1)) >= 1, err
    events = turn_events(out)
    starts = [e["start"] for e in events]
    assert starts == sorted(starts), "one clock across the reconnect"
    late = [e for e in events if e["start"] > 14 + 4]
    assert len(late) >= 5, "turns of the second part, after the pause, arrive"
    assert {e["speaker"] for e in late} == {"P1", "P2", "P3"}, "players kept their ids"


def test_a_sender_restart_without_a_pause_jumps_back_and_the_session_goes_on(
        tmp_path: Path) -> None:
    """The sender restarts at once (no stall to reconnect on): the same connection's
    timestamps jump back to the start. The clock goes on at the present, with one warning,
    and the second part's turns come as in a file replay."""
    port = free_port()
    live = _live(port, tmp_path, give_up=3)
    wait_listening(port, live)
    _push(port, "-t", "14", "-i", str(DEMO))
    _push(port, "-ss", "14", "-i", str(DEMO))  # a new ffmpeg: its timestamps start again
    out, err = live.communicate(timeout=90)
    assert live.returncode == 0, err
    assert "timestamps jumped back" in err
    assert re.search(r"\b1 resync", err), "once per event, and counted"
    events = turn_events(out)
    starts = [e["start"] for e in events]
    assert starts == sorted(starts), "one clock across the restart"
    late = [e for e in events if e["start"] > 14]
    assert len(late) >= 5, "turns of the second part arrive"
    assert {e["speaker"] for e in late} == {"P1", "P2", "P3"}, "players kept their ids"


def test_audio_and_video_drifting_apart_keep_the_session_and_its_turns(tmp_path: Path) -> None:
    """The audio's timestamps run at 0.9 of the picture's (a sender whose clocks disagree):
    3.4 s apart by the end. The audio follows its timestamps (samples that would lie over
    audio already out are dropped), is brought up to the picture once they lie more than
    MAX_SKEW_S apart, and the turns keep coming."""
    drifting = tmp_path / "drift.ts"
    subprocess.run([_ffmpeg(), "-hide_banner", "-loglevel", "error", "-i", str(DEMO),
                    "-c:v", "copy", "-af", "asetpts=PTS*0.9", "-c:a", "aac", "-f", "mpegts",
                    str(drifting)], check=True, timeout=60)
    out, err = _pushed(tmp_path, drifting)
    assert "audio is" in err and "behind the other stream" in err
    events = turn_events(out)
    assert len(events) >= 10, "the file's 12 turns, give or take a split at the step"
    assert [e["start"] for e in events] == sorted(e["start"] for e in events)
    # The last line starts 31.0 s into the picture, 0.9 x 31.0 s on the audio's clock.
    assert events[-1]["end"] > 0.9 * 31.0, "turns to the end of the stream"


def test_video_edges_keep_the_newest_and_audio_loses_nothing() -> None:
    config = load_config(None, {}, model=LivePipelineConfig)
    live = build_live(live_inputs("udp://127.0.0.1:9"), config, [], "s")
    policies = {(e.src, e.dst, e.types): e.policy for e in live.pipeline.edges}
    assert policies[("media", "perception", (VideoFrame,))] == "latest"
    assert policies[("media", "perception", (AudioChunk,))] == "block"  # Light-ASD's audio
    assert policies[("media", "vad", (AudioChunk,))] == "block"
    assert policies[("media", "asr", (AudioChunk,))] == "block"  # the recognizer's audio
    assert policies[("perception", "turns", (PerceivedFrame,))] == "block"
    edge = next(e for e in live.pipeline.edges if e.dst == "vad")
    assert edge.types == (AudioChunk,)
    assert next(e for e in live.pipeline.edges if e.dst == "perception").types == (VideoFrame,)


def test_with_mqtt_the_recognizer_runs_beside_the_transcript_inbox() -> None:
    """`live --mqtt` takes transcript lines from the broker; nobody may publish any, so
    the words are recognised all the same, and a line, when one comes, wins."""
    config = load_config(None, {"mqtt": {"url": "mqtt://127.0.0.1:9"}},
                         model=LivePipelineConfig)
    live = build_live(live_inputs("udp://127.0.0.1:9"), config, [], "s")
    assert live.inbox is not None
    into_turns = {(e.src, e.types) for e in live.pipeline.edges if e.dst == "turns"}
    assert ("asr", (Word, Transcribed)) in into_turns
    assert (live.inbox.name, (TranscriptLine,)) in into_turns
    turns = next(s for s in live.pipeline.stages if s.name == "turns")
    assert turns.core.text == "both" and turns.core.lines_optional


def test_input_choices() -> None:
    webcam = live_inputs("/dev/video0", audio_device="alsa:default")
    assert [(i.url, i.format, i.audio, i.video) for i in webcam] == [
        ("/dev/video0", "camera", False, True), ("default", "alsa", True, False)]
    assert live_inputs("-")[0].reconnect is False
    rtsp = live_inputs("rtsp://0.0.0.0:8554/live", listen=True, options={"timeout": "5"})
    assert rtsp[0].options == {"rtsp_flags": "listen", "listen_timeout": "10", "timeout": "5"}
    with pytest.raises(UserError, match="name a microphone as alsa:DEVICE"):
        live_inputs("/dev/video0", audio_device="mic")
    # This FFmpeg has no PulseAudio input: say so, and how to get at Pulse anyway.
    with pytest.raises(UserError, match="no PulseAudio input; use alsa:default"):
        live_inputs("/dev/video0", audio_device="pulse:default")
    bad = run_cli("live", "udp://127.0.0.1:9", "--option", "novalue")
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
    bad = run_cli("live", "udp://127.0.0.1:9", "--format", "nosuchformat")
    assert bad.returncode == 2 and "no 'nosuchformat' input" in bad.stderr


def test_transcript_and_stop_arrive_over_mqtt(tmp_path: Path) -> None:
    from stream.transcript.readers import read_transcript
    from tests.broker import Broker

    (tmp_path / "b").mkdir()
    broker = Broker(tmp_path / "b").start()
    port = free_port()
    config = tmp_path / "live.yaml"
    config.write_text(f"mqtt:\n  spool_dir: {tmp_path / 'spool'}\n{MOUTH}")
    live = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "live", _udp(port), "--json", "--give-up", "20",
         "--mqtt", broker.url, "--session", "room", "--config", str(config)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(port, live)  # running: the inbox subscribes as the pipeline starts
        deadline = time.monotonic() + 30
        while broker.retained("socialstream/room/status") != "online":
            assert time.monotonic() < deadline, "the session never came online"
        time.sleep(0.5)  # the inbox's own client subscribes alongside
        for line in read_transcript(DEMO.with_suffix(".srt")).lines:
            payload = json.dumps({"start": line.start, "end": line.end, "text": line.text})
            subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-q", "1", "-t",
                            "socialstream/room/transcript/in", "-m", payload], check=True)
        subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-t",
                        "socialstream/room/transcript/in", "-m", "{not json"], check=True)
        _push(port, "-t", "20", "-i", str(DEMO))
        subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-t", "socialstream/room/control",
                        "-m", "stop"], check=True)
        out, err = live.communicate(timeout=60)
    finally:
        broker.stop()
    assert live.returncode == 0, err
    events = turn_events(out)
    assert 6 <= len(events) <= 9, "the turns of the first 20 s, then stopped"
    assert events[0]["text"] == "Ben, did you finish the map for our trip?"
    whole = [e for e in events if e["end"] < 19.5]  # the last one may be cut at 20 s
    assert len(whole) >= 6 and all(e["text"] for e in whole), "words came over MQTT"
    assert "skipping transcript message" in err


async def test_camera_input_through_opencv_stamps_frames_by_the_wall_clock() -> None:
    from stream.sources.live import CAMERA, LiveConfig, LiveInput, LiveSource

    # No webcam here: OpenCV reads the demo file through the same camera path.
    source = LiveSource([LiveInput(str(DEMO), CAMERA, audio=False, reconnect=False)],
                        LiveConfig(give_up_s=0.5, reconnect_min_s=0.1), video_size=(160, 120))
    frames = [item async for item in source.items()]
    await source.close()
    assert len(frames) == 1012
    assert all(isinstance(f, VideoFrame) and f.image.shape == (120, 160, 3) for f in frames)
    pts = [f.pts for f in frames]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)


def test_a_pipe_is_read_once_to_its_end(tmp_path: Path) -> None:
    stream = tmp_path / "demo.ts"
    subprocess.run([_ffmpeg(), "-hide_banner", "-loglevel", "error", "-i", str(DEMO), "-c",
                    "copy", "-f", "mpegts", str(stream)], check=True)
    # The transport is tested. A pipe comes as fast as it is read, so perception (even mouth
    # motion) drops stale video whenever the CPU is busy, and a speaker change that the
    # dropped frames blur split a turn under load (13 turns for 12): perception is off.
    config = tmp_path / "voice.yaml"
    config.write_text("perception:\n  enabled: false\n")
    with stream.open("rb") as stdin:
        result = run_cli("live", "-", "--json", "--config", str(config), "--no-asr",
                         stdin=stdin, timeout=120)
    assert result.returncode == 0, result.stderr
    events = turn_events(result.stdout)
    assert len(events) == 12 and events[0]["start"] == 0.8


def test_a_reset_command_resets_the_conversation_too() -> None:
    """`reset` forgot players and tracks but kept the old group's names and history."""
    from pipelines.run.live import Live
    from stream.frames import Turn
    from stream.runtime import Pipeline
    from stream.tasks.stage import SocialStage

    pipeline = Pipeline()
    social = SocialStage("fusion")
    pipeline.add(social)
    social.predict(Turn(pts=1.0, index=0, start=0.0, end=0.9, text="Ben, hi.",
                        speaker_name="Ann"))
    old = social.dialogue
    Live(pipeline, source=None, session="s").control("reset")  # type: ignore[arg-type]
    assert social.dialogue is not old and not social.dialogue.said
