"""A live session: a webcam and microphone, or a network stream, through the same stages.

    inputs (v4l2 + alsa | rtsp | udp/tcp mpegts | rtmp ...) ─ live source ─ stages as in replay

Video edges keep only the newest frames (stale ones are dropped and counted);
audio, turns and events are never dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from pydantic import Field

from pipelines.config import ReplayConfig
from pipelines.run.replay import ReplayReport, compose, run_pipeline
from stream.errors import UserError
from stream.runtime import Pipeline, Stage
from stream.sources.live import CAMERA, LiveConfig, LiveInput, LiveSource
from stream.sources.mqtt_inbox import MqttInbox
from stream.speaker.perception import PerceptionStage
from stream.tasks.stage import SocialStage

LISTEN_OPTIONS = {"rtsp": {"rtsp_flags": "listen", "listen_timeout": "10"}, "tcp": {"listen": "1"},
                  "srt": {"mode": "listener"}, "rtmp": {"listen": "1"}}
"""FFmpeg input options that make a URL wait for a sender instead of connecting out."""


class LivePipelineConfig(ReplayConfig):
    live: LiveConfig = Field(default_factory=LiveConfig)


@dataclass
class Live:
    pipeline: Pipeline
    source: LiveSource
    session: str
    inbox: MqttInbox | None = None

    stopped_remotely: bool = False

    @property
    def fallbacks(self) -> int:
        """Times Light-ASD fell behind and mouth motion stood in."""
        return sum(stage.fallbacks for stage in self.pipeline.stages
                   if isinstance(stage, PerceptionStage))

    def control(self, command: str) -> None:
        """`stop`: drain and end; `reset`: new people at the table: forget players and
        tracks, and the conversation (names heard, history, the engine's session)."""
        if command == "stop":
            self.stopped_remotely = True
            self.pipeline.request_stop()
        elif command == "reset":
            for stage in self.pipeline.stages:
                if isinstance(stage, PerceptionStage | SocialStage):
                    stage.reset()


def live_inputs(target: str, *, fmt: str | None = None, audio_device: str | None = None,
                listen: bool = False, options: dict[str, str] | None = None) -> list[LiveInput]:
    """What to open for TARGET: a V4L2 device (with an optional microphone) or a URL."""
    options = dict(options or {})
    if target == "-":
        return [LiveInput("-", fmt, options, reconnect=False)]
    if target.startswith("/dev/video"):
        inputs = [LiveInput(target, fmt or CAMERA, options, audio=False)]
        if audio_device:
            backend, _, device = audio_device.partition(":")
            if backend == "pulse":
                raise UserError(f"{audio_device}: this FFmpeg has no PulseAudio input; use "
                                "alsa:default, which goes through PulseAudio on a Pulse system")
            if backend != "alsa" or not device:
                raise UserError(f"{audio_device}: name a microphone as alsa:DEVICE "
                                "(e.g. alsa:default)")
            inputs.append(LiveInput(device, backend, {}, video=False))
        return inputs
    if listen:
        scheme = urlsplit(target).scheme
        options = {**LISTEN_OPTIONS.get(scheme, {}), **options}
    return [LiveInput(target, fmt, options)]


def build_live(inputs: list[LiveInput], config: LivePipelineConfig, sinks: Sequence[Stage],
               session: str) -> Live:
    source = LiveSource(inputs, config.live, video_fps=config.source.video_fps,
                        video_size=config.source.video_size)
    pipe = Pipeline()
    pipe.add(source)
    inbox = None
    if config.mqtt.url is not None and config.live.mqtt_inputs:
        inbox = MqttInbox(config.mqtt, session, source.now,
                          latency_s=config.live.transcript_latency_s)
        source.on_end.append(inbox.finish)
        pipe.add(inbox)
    compose(pipe, config, sinks, has_audio=source.has_audio, has_video=source.has_video,
            transcript=inbox.name if inbox else None, video_policy="latest",
            session=session, lines_optional=True)
    live = Live(pipe, source, session, inbox)
    if inbox is not None:
        inbox.on_control = live.control
    return live


async def run_live(live: Live, *, drain_on_sigint: bool = True) -> ReplayReport:
    return await run_pipeline(live.pipeline, None, drain_on_sigint)
