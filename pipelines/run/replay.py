"""Replay a recorded conversation: media (+ transcript) -> VAD, perception -> turns -> sinks.

    media ─┬─ audio ─ vad ─┬─ voice frames ─┐
           │               └─ speech events ┼──────────────────┐
           ├─ audio + speech events ─ asr ─ words ─────────────┤  (without a transcript)
           └─ video ─────────── perception ─┴─ perceived frames ┼─ turns ─ sinks
    transcript sidecar ─ lines ────────────────────────────────┘
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.config import ReplayConfig
from stream.audio.recognizer import RecognizerStage
from stream.audio.vad import VadStage
from stream.engine.predict import EngineStage
from stream.errors import UserError
from stream.events import check_session, new_run, safe_session
from stream.frames import (
    AudioChunk,
    Item,
    PerceivedFrame,
    Prediction,
    SpeechSegment,
    SpeechStarted,
    Transcribed,
    TranscriptLine,
    Turn,
    VideoFrame,
    VoiceFrame,
    Word,
)
from stream.runtime import Pipeline, Policy, Stage
from stream.serving.remote import RemoteEngineStage, bridged
from stream.sources.media import MediaInfo, MediaSource
from stream.sources.pacing import Pacer
from stream.sources.transcript import TranscriptSource
from stream.speaker.perception import PerceptionStage
from stream.tasks.stage import SocialStage
from stream.transcript.readers import Transcript, find_sidecar, read_transcript
from stream.turns.assembler import TextSource, TurnAssembler, TurnStage


@dataclass
class Replay:
    """A built, not yet run, replay graph and what it was built from."""

    pipeline: Pipeline
    media: MediaSource
    transcript: Transcript | None
    session: str

    @property
    def info(self) -> MediaInfo:
        return self.media.info


@dataclass
class ReplayReport:
    wall_s: float
    media_s: float | None
    interrupted: bool
    stopped_by: int | None = None
    """The signal that stopped the run (it drained first), if one did."""
    metrics: dict[str, dict[str, float | int | None]] = field(default_factory=dict)

    @property
    def real_time_factor(self) -> float | None:
        return self.wall_s / self.media_s if self.media_s else None


class Collect(Stage):
    """Keeps items of the given kinds in memory (tests, benchmarks, evaluation)."""

    def __init__(self, kinds: tuple[type[Item], ...] = (Turn,), name: str = "collect") -> None:
        self.kinds, self.name = kinds, name
        self.inputs = kinds
        self.items: list[Item] = []

    async def process(self, item: Item) -> Sequence[Item]:
        if isinstance(item, self.kinds):
            self.items.append(item)
        return ()

    @property
    def turns(self) -> list[Turn]:
        return [item for item in self.items if isinstance(item, Turn)]


def replay_and_collect(media: str, config: ReplayConfig
                       ) -> tuple[list[PerceivedFrame], list[Turn]]:
    """Run a replay to the end; return every perceived frame and every turn."""
    turns, frames = Collect(), Collect((PerceivedFrame,), name="frames")
    replay = build_replay(media, config, [turns])
    if config.perception.enabled and replay.info.has_video:
        replay.pipeline.add(frames)
        replay.pipeline.connect("perception", frames.name, PerceivedFrame)
    asyncio.run(run_replay(replay))
    return [f for f in frames.items if isinstance(f, PerceivedFrame)], turns.turns


def resolve_transcript(media: str, transcript: Path | None, sidecar: bool = True
                       ) -> Transcript | None:
    path = transcript or (find_sidecar(media) if sidecar else None)
    return read_transcript(path) if path is not None else None


def build_replay(media: str, config: ReplayConfig, sinks: Sequence[Stage],
                 transcript: Path | None = None, *, sidecar: bool = True) -> Replay:
    """Wire the graph. Raises `UserError` for unusable media or transcript.

    `sidecar=False` leaves a transcript beside the media unread, so that the words come
    from the recognizer (when it is enabled)."""
    src = config.source
    source = MediaSource(media, pacer=Pacer(src.speed if src.realtime else None),
                         video_fps=src.video_fps, video_size=src.video_size)
    lines = resolve_transcript(media, transcript, sidecar)
    inputs = {"the media": media, "the transcript": lines and lines.path}
    refuse_input_as_output(config.output.out, inputs)
    refuse_input_as_output(config.output.annotate, inputs, flag="--annotate")
    pipe = Pipeline()
    pipe.add(source)
    if lines is not None:
        pipe.add(TranscriptSource(lines))
    session = session_id(media, config)
    compose(pipe, config, sinks, has_audio=source.info.has_audio,
            has_video=source.info.has_video, transcript="transcript" if lines else None,
            session=session)
    return Replay(pipe, source, lines, session)


LAG_SLACK = 16
"""Room on the edges beside perception's hold-back: more speech events than VAD can make
in that time."""
WORD_SLACK = 128
"""Room on the recognizer's edge to the turns beside perception's hold-back: the words of
a few decodes (a `max_chunk_s` chunk holds about 15)."""


def compose(pipe: Pipeline, config: ReplayConfig, sinks: Sequence[Stage], *, has_audio: bool,
            has_video: bool, transcript: str | None, media: str = "media",
            video_policy: Policy = "block", session: str = "media",
            lines_optional: bool = False) -> None:
    """The stages after the sources: VAD, perception, turns, sinks.

    `video_policy="latest"` lets a live feed drop stale frames before perception.
    `lines_optional`: the `transcript` stage is an inbox that may never send a line (live
    MQTT): the recognizer runs beside it, and a line, when one comes, wins.
    """
    size = config.queues.size
    perceive = config.perception.enabled and has_video
    # Light-ASD holds frames until their scores are final (about 0.3 s of media); the
    # turns stage merges them with what VAD and the recognizer sent meanwhile, which their
    # edges must be able to hold, or VAD would stop reading audio that perception needs.
    # Media seconds per wall-clock second when frames come in real time: live (the only
    # caller that takes the latest frame) or a paced replay.
    pace = 1.0 if video_policy == "latest" else \
        config.source.speed if config.source.realtime else None
    perception = PerceptionStage(config.perception, has_audio=has_audio, pace=pace) \
        if perceive else None
    lagging = perception is not None and perception.model == "light_asd"
    slack = max(size, LAG_SLACK) if lagging else size
    recognize = (transcript is None or lines_optional) and has_audio and \
        config.recognizer.enabled
    text: TextSource | None = ("both" if transcript else "asr") if recognize else \
        "transcript" if transcript else None
    assembler = TurnAssembler(config.turns, has_audio=has_audio,
                              orphan_delay_s=config.vad.hangover_s + config.vad.frame_s,
                              speaker=config.perception.speaker if perceive else None,
                              text=text, lines_optional=lines_optional)
    if has_audio:
        pipe.add(VadStage(config.vad, emit_frames=perceive))
        pipe.connect(media, "vad", AudioChunk, maxsize=size)
    if perception is not None:
        pipe.add(perception)
        pipe.connect(media, "perception", VideoFrame, policy=video_policy, maxsize=size)
        if has_audio:
            pipe.connect("vad", "perception", VoiceFrame, maxsize=slack)
        if perception.model == "light_asd":
            pipe.connect(media, "perception", AudioChunk, maxsize=slack)
    pipe.add(TurnStage(assembler))
    # Words first: the recognizer's words and progress share their pts with the segment
    # whose closing decoded them, and the turn it closes waits for them.
    if recognize:
        pipe.add(RecognizerStage(config.recognizer))
        pipe.connect(media, "asr", AudioChunk, maxsize=size)
        pipe.connect("vad", "asr", SpeechStarted, SpeechSegment, maxsize=slack)
        pipe.connect("asr", "turns", Word, Transcribed, maxsize=max(size, WORD_SLACK))
    if transcript is not None:
        pipe.connect(transcript, "turns", TranscriptLine, maxsize=slack)
    if has_audio:
        pipe.connect("vad", "turns", SpeechStarted, SpeechSegment, maxsize=slack)
    if perceive:
        pipe.connect("perception", "turns", PerceivedFrame, maxsize=size)
    else:
        pipe.connect(media, "turns", VideoFrame, policy=video_policy, maxsize=size)
    predictor = config.predictions.predictor
    if config.engine.url is not None and config.engine.model is not None:
        raise UserError("--engine sends turns to a service that has its own model: "
                        "give --engine URL or --model NAME, not both")
    # With the engine behind the MQTT bridge, the bridge answers the turns (MqttSink sends
    # them with what it needs): nothing is predicted here.
    predict = predictor != "none" and not bridged(config.engine)
    attention = config.output.attention
    if attention and (config.output.annotate is None or config.engine.model is None
                      or not predict):
        raise UserError("--attention draws the engine's attention over the annotated video: it "
                        "needs --annotate OUT.mp4 and --model (a vision-language model), and "
                        "predictions (not --predictor none)")
    if predict:
        names = config.perception.names
        engine: EngineStage | RemoteEngineStage | None = None
        if config.engine.url is not None:
            # A conversation per run, as with a model in process: a second replay of the
            # same media starts afresh instead of going on from the first.
            engine = RemoteEngineStage(config.engine, f"{session}/{new_run()}", names)
        elif config.engine.model is not None:
            engine = EngineStage(config.engine, names, attention=attention)
        if predictor == "engine" and engine is None:
            raise UserError("predictions.predictor engine needs a model: add --model (or set "
                            "engine.model) or --engine URL")
        pipe.add(SocialStage(predictor, names, engine))
        pipe.connect("turns", "predict", Turn, maxsize=size)
    for i, sink in enumerate(sinks):
        name = pipe.add(sink, f"{sink.name}-{i}" if i else sink.name)
        pipe.connect("turns", name, Turn, maxsize=size)
        if predict and Prediction in sink.inputs:
            # Outside the media-time merge: a slow model delays only predictions, never the
            # turns and per-frame speakers the same sink writes.
            pipe.connect("predict", name, Prediction, maxsize=size, ordered=False)
        # A sink that draws every frame (the annotated video) is fed without dropping,
        # with the sound; one that shows the present (MQTT, the web view) keeps the latest.
        every = getattr(sink, "every_frame", False)
        if perceive and PerceivedFrame in sink.inputs:
            pipe.connect("perception", name, PerceivedFrame, policy="block" if every
                         else "latest", maxsize=slack if every else size)
        elif not perceive and has_video and VideoFrame in sink.inputs:
            pipe.connect(media, name, VideoFrame, policy="block" if every else "latest",
                         maxsize=size)
        if has_audio and AudioChunk in sink.inputs:
            pipe.connect(media, name, AudioChunk, maxsize=slack)
        if (bind := getattr(sink, "bind_media", None)) is not None:
            bind(has_audio=has_audio, has_video=has_video)


async def run_replay(replay: Replay, *, drain_on_sigint: bool = False,
                     on_progress: Callable[[float], None] | None = None) -> ReplayReport:
    if on_progress is not None:
        media_name = replay.media.name
        replay.pipeline.observe(
            lambda node, item: on_progress(item.pts) if node == media_name else None)
    return await run_pipeline(replay.pipeline, replay.info.duration, drain_on_sigint)


async def run_pipeline(pipeline: Pipeline, media_s: float | None,
                       drain_on_sigint: bool) -> ReplayReport:
    """Run to the end (or a drained Ctrl-C) and report how it went."""
    began = time.perf_counter()
    if drain_on_sigint:
        with pipeline.signals_drain():
            await pipeline.run()
    else:
        await pipeline.run()
    return ReplayReport(wall_s=time.perf_counter() - began, media_s=media_s,
                        interrupted=pipeline.stop_requested, stopped_by=pipeline.stopped_by,
                        metrics=pipeline.metrics())


def refuse_input_as_output(out: Path | None, inputs: dict[str, str | None],
                           flag: str = "--out") -> None:
    """An output that is one of the run's inputs would destroy it while it is read."""
    if out is None:
        return
    for role, given in inputs.items():
        if given is None or given == "-" or "://" in given:
            continue
        # samefile follows links: a symlink or hard link to an input is that input
        if out.exists() and Path(given).exists() and os.path.samefile(out, given):
            raise UserError(f"{flag} {out}: is an input of this run ({role}); writing "
                            "there would destroy it: choose another file")


def refuse_one_file_twice(out: Path | None, annotate: Path | None) -> None:
    """Two writers on one file leave neither output readable."""
    if out is None or annotate is None:
        return
    same = out.resolve() == annotate.resolve() or (
        out.exists() and annotate.exists() and os.path.samefile(out, annotate))
    if same:
        raise UserError(f"--annotate {annotate}: is also --out; both would write one file "
                        "and destroy each other: choose two files")


def session_id(media: str, config: ReplayConfig) -> str:
    """The configured session id (checked), else one made from the media's stem (`stdin`
    for a pipe)."""
    if config.output.session is not None:
        return check_session(config.output.session)
    if media == "-":
        return "stdin"
    return safe_session(Path(media.split("?")[0].rstrip("/")).stem)
