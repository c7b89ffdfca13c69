"""`replay --annotate`: the annotated video, decoded and checked against the ground truth."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from pipelines.config import load_config
from pipelines.run.replay import build_replay
from stream.engine.synthetic import random_qwen, word_tokenizer
from stream.view.overlay import HEAT_TAG, SPEAKER
from stream.view.video import AnnotatedVideo
from stream.view.web import WebView
from tests.conftest import ROOT, SHORT_TURNS, run_cli


def _pictures(path: Path, torn_tail: bool = False) -> list[tuple[float, np.ndarray]]:
    """Every picture of the video; with `torn_tail`, those before a last packet that a kill
    cut short (a player stops there too)."""
    pictures = []
    with av.open(str(path)) as container:
        try:
            for frame in container.decode(video=0):
                pictures.append((float(frame.time), frame.to_ndarray(format="rgb24")))
        except av.error.InvalidDataError:
            if not torn_tail:
                raise
    return pictures


def _highlight(image: np.ndarray) -> np.ndarray:
    """Pixels of the speaker's colour, allowing for H.264's loss."""
    return np.all(np.abs(image.astype(int) - SPEAKER) < 50, axis=-1)


@pytest.mark.slow
def test_the_annotated_demo_shows_each_true_speaker_highlighted(tmp_path: Path) -> None:
    media = ROOT / "examples" / "demo.mp4"
    truth = json.loads(media.with_suffix(".truth.json").read_text())
    out = tmp_path / "annotated.mp4"
    result = run_cli("replay", str(media), "--annotate", str(out), "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    with av.open(str(media)) as source, av.open(str(out)) as annotated:
        expected = source.streams.video[0].frames
        sound = annotated.streams.audio[0]
        assert sound.codec_context.name == "aac", "the input's sound goes with the picture"
        assert float(sound.duration * sound.time_base) == pytest.approx(truth["duration"],
                                                                        abs=0.15)
    pictures = _pictures(out)
    assert len(pictures) == expected, "every frame drawn, none dropped"
    times = np.array([t for t, _ in pictures])
    seats = {p["id"]: p["seat_x"] for p in truth["players"]}
    for spoken in truth["turns"]:
        middle = (spoken["start"] + spoken["end"]) / 2
        _, image = pictures[int(np.argmin(np.abs(times - middle)))]
        mask = _highlight(image)
        columns = np.nonzero(mask.any(axis=0))[0]
        assert mask.sum() > 1000, f"no speaker highlighted at {middle:.2f}s"
        nearest = min(seats, key=lambda p: abs(seats[p] - columns.mean()))
        assert nearest == spoken["speaker"], f"turn {spoken['turn']} at {middle:.2f}s"
        # Only one person is highlighted: all of it lies within one seat's third.
        assert columns.max() - columns.min() < truth["width"] / 3
    # Every seat has its box drawn: the overlay changes the picture around each face.
    with av.open(str(media)) as source:
        plain = next(f.to_ndarray(format="rgb24") for f in source.decode(video=0)
                     if f.time >= 2.0)
    _, drawn = pictures[int(np.argmin(np.abs(times - 2.0)))]
    changed = np.abs(drawn.astype(int) - plain).sum(axis=-1) > 120
    for x in seats.values():
        assert changed[:, max(0, x - 100): x + 100].sum() > 500, f"no box near x={x}"


@pytest.mark.slow
def test_an_interrupted_annotation_is_still_playable(tmp_path: Path) -> None:
    out = tmp_path / "cut.mp4"
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "replay", str(ROOT / "examples" / "duo.mp4"),
         "--realtime", "--annotate", str(out), "--json"], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not out.exists() or out.stat().st_size < 200_000):
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)  # no chance to finish the file
        process.wait(30)
    pictures = _pictures(out, torn_tail=True)
    assert len(pictures) >= 25, "the fragments written before the kill play"
    assert pictures[0][0] == 0.0


@pytest.mark.slow
def test_attention_is_drawn_while_each_turn_is_shown(short_demo: Path, tmp_path: Path) -> None:
    """A tiny random Qwen2.5-VL saved as a checkpoint and run as a user would: each turn's
    map (labelled with its head count) lies under the picture while the turn is shown."""
    model = tmp_path / "qwen"
    tokenizer = word_tokenizer()
    random_qwen("tiny", len(tokenizer)).save_pretrained(model)
    tokenizer.save_pretrained(model)
    out, events = tmp_path / "attention.mp4", tmp_path / "events.jsonl"
    result = run_cli("replay", str(short_demo), "--model", str(model),
                     "--annotate", str(out), "--attention", "--out", str(events), timeout=400)
    assert result.returncode == 0, result.stderr
    known = [e["emitted_at"] for e in map(json.loads, events.read_text().splitlines())
             if e["schema"].startswith("socialstream.turn/")]
    assert len(known) == SHORT_TURNS

    def labelled(image: np.ndarray) -> bool:
        corner = image[4:30, 4:160].astype(int)
        return int(np.all(np.abs(corner - HEAT_TAG) < 50, axis=-1).sum()) > 200

    pictures = _pictures(out)
    tagged = [t for t, image in pictures if labelled(image)]
    assert tagged and min(tagged) >= known[0], "nothing before the first turn is known"
    # Each turn's map appears while the turn is shown (the model answers in its own time:
    # a turn known in the video's last second may end before its answer comes).
    for at in known:
        if at < pictures[-1][0] - 1.0:
            assert any(at <= t <= at + 4.0 for t in tagged), f"no map for the turn at {at}"
    assert all(any(at <= t <= at + 4.04 for at in known) for t in tagged)


def test_attention_without_what_it_draws_on_is_refused(tmp_path: Path) -> None:
    demo = str(ROOT / "examples" / "demo.mp4")
    for extra in (["--annotate", str(tmp_path / "out.mp4")], ["--model", "smollm2"]):
        result = run_cli("replay", demo, "--attention", *extra)
        assert result.returncode == 2, result.stderr
        assert "--attention draws the engine's attention over the annotated video: it needs " \
            "--annotate OUT.mp4 and --model" in " ".join(result.stderr.split())


def test_annotate_refuses_what_it_cannot_write(tmp_path: Path) -> None:
    demo = str(ROOT / "examples" / "demo.mp4")
    result = run_cli("replay", demo, "--annotate", str(tmp_path / "out.avi"))
    assert result.returncode == 2 and "write .mp4 (fragmented MP4) or .ts" in result.stderr
    result = run_cli("replay", demo, "--annotate", demo)
    assert result.returncode == 2 and "is an input of this run" in result.stderr
    # One file for both outputs: both were destroyed with exit 0.
    both = tmp_path / "both.mp4"
    result = run_cli("replay", demo, "--annotate", str(both), "--out", str(both))
    assert result.returncode == 2 and "is also --out" in result.stderr
    assert not both.exists()
    wav = tmp_path / "sound.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-i", demo, "-vn", str(wav)], check=True)
    result = run_cli("replay", str(wav), "--annotate", str(tmp_path / "out.mp4"))
    assert result.returncode == 2 and "has no video to draw on" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_annotated_video_is_fed_every_frame_and_the_web_view_the_latest(
        tmp_path: Path) -> None:
    sinks = [AnnotatedVideo(tmp_path / "a.mp4"), WebView("127.0.0.1:0", "s")]
    replay = build_replay(str(ROOT / "examples" / "demo.mp4"), load_config(), sinks)
    into = {(e.dst, t.__name__): e.policy for e in replay.pipeline.edges for t in e.types}
    assert into[("annotate", "PerceivedFrame")] == "block", "a dropped frame is a lost frame"
    assert into[("annotate", "AudioChunk")] == "block"
    assert into[("web-1", "PerceivedFrame")] == "latest", "viewers see the present"
    assert ("web-1", "AudioChunk") not in into
