"""Write a rendered scene: H.264 + AAC clip, SRT transcript, JSON ground truth."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from rich.progress import Progress

from stream.demo.render import PlacedLine, Renderer, layout, mix, seat_centres
from stream.demo.scene import Scene
from stream.demo.speech import synthesize
from stream.frames import SAMPLE_RATE

AAC_FRAME = 1024


def generate(scene: Scene, out_dir: Path, stem: str = "demo", crf: int = 27) -> Path:
    """Render `scene` into `out_dir/stem.{mp4,srt,truth.json}`; returns the clip's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    audios = [synthesize(line.text, scene.player(line.speaker).voice, scene.words_per_minute)
              for line in scene.lines]
    placed, duration = layout(scene, audios)
    clip = out_dir / f"{stem}.mp4"
    _write_clip(clip, scene, placed, duration, crf)
    (out_dir / f"{stem}.srt").write_text(srt(scene, placed), encoding="utf-8")
    truth = ground_truth(scene, placed, duration)
    (out_dir / f"{stem}.truth.json").write_text(json.dumps(truth, indent=1) + "\n",
                                                 encoding="utf-8")
    return clip


def _write_clip(path: Path, scene: Scene, placed: list[PlacedLine], duration: float,
                crf: int) -> None:
    renderer = Renderer(scene, placed)
    track = mix(placed, duration, scene.audio_noise)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=scene.fps)
        video.width, video.height, video.pix_fmt = scene.width, scene.height, "yuv420p"
        video.options = {"crf": str(crf), "preset": "medium", "g": str(scene.fps * 2)}
        audio = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        audio.time_base = Fraction(1, SAMPLE_RATE)
        frames = round(duration * scene.fps)
        sent = 0
        with Progress(transient=True) as progress:
            task = progress.add_task(f"rendering {path.name}", total=frames)
            for n in range(frames):
                picture = av.VideoFrame.from_ndarray(renderer.frame(n / scene.fps), format="rgb24")
                picture.pts = n
                picture.time_base = Fraction(1, scene.fps)
                container.mux(video.encode(picture))
                # Interleave: audio up to the end of this frame follows it in the file.
                until = min(len(track), round((n + 1) / scene.fps * SAMPLE_RATE))
                while sent < until:
                    container.mux(audio.encode(_aac_frame(track, sent)))
                    sent += AAC_FRAME
                progress.advance(task)
        while sent < len(track):
            container.mux(audio.encode(_aac_frame(track, sent)))
            sent += AAC_FRAME
        container.mux(video.encode(None))
        container.mux(audio.encode(None))


def _aac_frame(track: np.ndarray, at: int) -> av.AudioFrame:
    chunk = np.ascontiguousarray(track[at: at + AAC_FRAME][None, :])
    sound = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
    sound.sample_rate, sound.pts = SAMPLE_RATE, at
    return sound


def _stamp(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def srt(scene: Scene, placed: list[PlacedLine]) -> str:
    blocks = [f"{i + 1}\n{_stamp(pl.start)} --> {_stamp(pl.end)}\n{scene.lines[i].text}\n"
              for i, pl in enumerate(placed)]
    return "\n".join(blocks)


def ground_truth(scene: Scene, placed: list[PlacedLine], duration: float) -> dict:
    centres = seat_centres(scene)
    players = [{"id": p.id, "name": p.name, "voice": p.voice, "seat_x": centres[i]}
               for i, p in enumerate(scene.players)]
    turns = []
    for pl in placed:
        line = scene.lines[pl.index]
        turns.append({
            "turn": pl.index, "start": round(pl.start, 4), "end": round(pl.end, 4),
            "speaker": line.speaker, "addressee": line.addressee, "text": line.text,
            "pronouns": [{"word": p.word, "player": p.player} for p in line.pronouns],
            "mentions": list(line.mentions),
        })
    return {"schema": "socialstream.truth/1", "duration": round(duration, 4),
            "width": scene.width, "height": scene.height, "fps": scene.fps,
            "players": players, "turns": turns}
