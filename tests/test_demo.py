"""The demo clip and its generator: truth, moving mouths, turning heads."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipelines.config import load_config
from pipelines.run.replay import Collect, build_replay, run_replay
from stream.demo import portrait as pt
from stream.demo.render import seat_centres
from stream.demo.scene import DEMO, Line, Player, Scene
from stream.demo.writer import generate
from stream.frames import VideoFrame
from stream.sources.media import MediaSource


def _mouth_boxes(scene: Scene) -> list[tuple[slice, slice]]:
    boxes = []
    for i, x in enumerate(seat_centres(scene)):
        look = pt.portrait(scene.players[i].look)
        mx = x - round(pt.WIDTH * scene.scale) // 2 + look.mouth[0] * scene.scale
        my = scene.top + look.mouth[1] * scene.scale
        boxes.append((slice(int(my - 6), int(my + 16)), slice(int(mx - 16), int(mx + 16))))
    return boxes


def test_demo_is_small_and_its_truth_covers_every_task(demo: Path, truth: dict) -> None:
    assert demo.stat().st_size < 3e6
    assert 25 <= truth["duration"] <= 40
    turns = truth["turns"]
    assert {t["speaker"] for t in turns} == {"P1", "P2", "P3"}
    assert all(t["addressee"] != t["speaker"] for t in turns)
    assert sum(bool(t["pronouns"]) for t in turns) >= 3
    assert sum(bool(t["mentions"]) for t in turns) >= 3
    words = " ".join(t["text"] for t in turns).lower()
    assert all(w in words.split() or f"{w}," in words for w in ("you", "he", "she"))


def test_only_the_speaker_moves_their_mouth(demo: Path, truth: dict) -> None:
    async def frames() -> list[VideoFrame]:
        source = MediaSource(str(demo), audio=False)
        got = [f async for f in source.items() if isinstance(f, VideoFrame)]
        await source.close()
        return got

    video = asyncio.run(frames())
    boxes = _mouth_boxes(DEMO)
    # Per player: the mouth box of every frame, as grey levels.
    mouths = [np.stack([f.image[ys, xs].mean(axis=2) for f in video]) for ys, xs in boxes]
    motion = [np.abs(np.diff(m, axis=0)).mean(axis=(1, 2)) for m in mouths]
    times = np.array([f.pts for f in video[1:]])
    ids = [p.id for p in DEMO.players]
    for turn in truth["turns"]:
        inside = (times >= turn["start"]) & (times <= turn["end"])
        energy = [m[inside].mean() for m in motion]
        assert ids[int(np.argmax(energy))] == turn["speaker"], (turn["turn"], energy)


def test_speaker_faces_the_addressee() -> None:
    neutral = pt.animate(pt.portrait(0), 0.0, 0.0)
    right = pt.animate(pt.portrait(0), 0.0, 1.0)
    nose_x, nose_y = (round(v) for v in pt.NOSE)
    row = slice(nose_y - 10, nose_y + 10)
    # The nose region moves right: the left half of the face gains skin, the far edges stay.
    shift = np.abs(right[row].astype(int) - neutral[row].astype(int)).sum(axis=(0, 2))
    assert shift[nose_x - 15: nose_x + 15].sum() > 10 * shift[:40].sum()


@pytest.mark.skipif(shutil.which("espeak-ng") is None and not os.environ.get("CI"),
                    reason="espeak-ng not installed here (CI installs it and runs this)")
def test_generator_writes_a_scene_that_replays_to_its_truth(tmp_path: Path) -> None:
    scene = Scene(
        players=(Player("P1", "Dana", "en-us+f2", look=2), Player("P2", "Eli", "en-gb+m1", 1)),
        lines=(Line("P1", "P2", "Eli, are you ready?", mentions=("P2",)),
               Line("P2", "P1", "Yes, let us go.")),
        width=320, height=240, lead_in=0.5, gaps=(0.8,), tail=0.6)
    clip = generate(scene, tmp_path, stem="tiny")
    truth = json.loads((tmp_path / "tiny.truth.json").read_text())
    assert [t["speaker"] for t in truth["turns"]] == ["P1", "P2"]
    assert (tmp_path / "tiny.srt").read_text().count("-->") == 2
    collect = Collect()
    asyncio.run(run_replay(build_replay(str(clip), load_config(), [collect])))
    assert [t.text for t in collect.turns] == ["Eli, are you ready?", "Yes, let us go."]
    for turn, expected in zip(collect.turns, truth["turns"], strict=True):
        assert abs(turn.start - expected["start"]) < 0.42
