"""`socialstream`: the command line. One subcommand per pipeline, plus `bench`.

Bad input ends with one line on stderr and a non-zero exit: 2 for input or
configuration a user can fix, 1 for a failure inside a stage, 130 after Ctrl-C
(what was in flight is drained and written first).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from pipelines.bench import command as bench
from pipelines.config import ReplayConfig, load_config
from pipelines.evaluation import command as eval_command
from pipelines.run import serve, subscribe
from pipelines.run.live import LivePipelineConfig, build_live, live_inputs, run_live
from pipelines.run.replay import (
    Replay,
    ReplayReport,
    build_replay,
    refuse_one_file_twice,
    run_replay,
    session_id,
)
from stream.errors import UserError
from stream.events import check_session, new_run
from stream.runtime import Pipeline, PipelineError, Stage
from stream.serving.remote import bridged
from stream.sinks.console import ConsoleSink
from stream.sinks.jsonl import JsonlSink
from stream.sinks.mqtt import MqttSink
from stream.view.video import AnnotatedVideo
from stream.view.web import WebView

HELP = {
    "media": "media file, '-' for a pipe on stdin, or any URL FFmpeg opens",
    "transcript": "SRT, WebVTT or JSONL transcript (default: MEDIA's stem with one of "
                  ".jsonl/.vtt/.srt, if present)",
    "json": "print only JSON lines on stdout (logs, progress and metrics go to stderr)",
    "config": "YAML config (default: built-in defaults, as in configs/replay.yaml)",
    "out": "also write the JSON lines to this file",
    "realtime": "pace the replay like a live feed (events are identical to a fast replay)",
    "speed": "pace the replay at this speed (2 = twice real time); implies --realtime",
    "video_fps": "decimate video for the vision path to this frame rate",
    "session": "session id written into events (default: MEDIA's stem)",
    "verbose": "log more (repeat for debug)",
    "no_transcript": "leave a transcript beside MEDIA unread: the words are recognised from "
                     "the audio (as on a live feed)",
    "no_asr": "without a transcript, do not recognise words from the audio (by default "
              "Whisper base does, on the CPU; docs/words.md)",
    "asr_model": "recognise words with this local CTranslate2 Whisper folder instead of the "
                 "bundled Whisper base (docs/words.md)",
    "model": "after every turn, answer who is addressed, referred to and mentioned with this "
             "model: a checkpoint directory, a model id in the local Hugging Face cache, or "
             "smollm2 (docs/engine.md)",
    "predictor": "who answers after each turn: fusion (the default; with --model or "
                 "--engine the model's scores ride along), cues, engine (the model's answers; "
                 "needs --model or --engine) or none",
    "engine": "send each turn to an engine service (socialstream serve) at this URL "
              "(http://HOST:PORT/) instead of loading a model here; mqtt://BROKER:PORT: "
              "publish the turns there for serve --mqtt, which publishes the predictions",
    "annotate": "also write the video with boxes, speaker, words and predictions drawn on "
                "it to this .mp4 or .ts (playable even if the run is cut off)",
    "attention": "with --annotate and a vision-language --model: draw where the model's "
                 "speaker-biased heads looked while reading each turn's words, as a heat map",
    "web": "serve a live web view of the session on [HOST:]PORT (127.0.0.1 unless a host "
           "is given; set $SOCIALSTREAM_WEB_TOKEN to require ?token=)",
    "mqtt": "publish events to this broker: mqtt://[user@]host:port (password from "
            "$SOCIALSTREAM_MQTT_PASSWORD, never the command line)",
}

EXIT_USER, EXIT_FAILURE, EXIT_INTERRUPTED = 2, 1, 130
FLAGS = {"source.realtime": "--realtime", "source.speed": "--speed",
         "source.video_fps": "--video-fps", "output.out": "--out", "output.session": "--session",
         "output.annotate": "--annotate", "output.web": "--web",
         "output.attention": "--attention",
         "mqtt.url": "--mqtt", "recognizer.enabled": "--no-asr",
         "recognizer.model": "--asr-model", "engine.model": "--model",
         "engine.url": "--engine",
         "live.give_up_s": "--give-up", "predictions.predictor": "--predictor"}
"""Config keys the flags set: a bad value is reported as the flag the user typed."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="socialstream", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help=HELP["verbose"])
    commands = parser.add_subparsers(dest="command", required=True)

    replay = commands.add_parser("replay", help="replay a recorded conversation")
    replay.add_argument("media", help=HELP["media"])
    replay.add_argument("--transcript", type=Path, help=HELP["transcript"])
    replay.add_argument("--no-transcript", action="store_true", help=HELP["no_transcript"])
    replay.add_argument("--json", action="store_true", help=HELP["json"])
    replay.add_argument("--realtime", action="store_true", default=None, help=HELP["realtime"])
    replay.add_argument("--speed", type=float, help=HELP["speed"])
    replay.add_argument("--video-fps", type=float, help=HELP["video_fps"])
    replay.add_argument("--config", type=Path, help=HELP["config"])
    replay.add_argument("--out", type=Path, help=HELP["out"])
    replay.add_argument("--session", help=HELP["session"])
    replay.add_argument("--mqtt", metavar="URL", help=HELP["mqtt"])
    replay.add_argument("--annotate", type=Path, metavar="OUT.mp4", help=HELP["annotate"])
    replay.add_argument("--attention", action="store_true", default=None,
                        help=HELP["attention"])
    replay.add_argument("--web", metavar="[HOST:]PORT", help=HELP["web"])
    _asr_arguments(replay)
    replay.add_argument("--model", help=HELP["model"])
    replay.add_argument("--engine", metavar="URL", help=HELP["engine"])
    replay.add_argument("--predictor", help=HELP["predictor"])
    replay.set_defaults(func=_replay)

    live = commands.add_parser("live", help="watch a webcam or a network stream")
    live.add_argument("target", help="/dev/videoN, or a stream URL (rtsp://, udp://, tcp://, "
                      "rtmp://, ...)")
    live.add_argument("--audio", metavar="DEVICE",
                      help="microphone beside a webcam: alsa:DEVICE (alsa:default goes through "
                           "PulseAudio where it runs)")
    live.add_argument("--format", help="FFmpeg input format, when it cannot be guessed")
    live.add_argument("--listen", action="store_true",
                      help="wait for a sender on the URL (RTSP, TCP, RTMP) instead of "
                           "connecting to it")
    live.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      help="FFmpeg input option, repeatable (e.g. rtsp_transport=tcp)")
    live.add_argument("--give-up", type=float, metavar="S",
                      help="end the session after S seconds without data (default: never)")
    live.add_argument("--json", action="store_true", help=HELP["json"])
    live.add_argument("--config", type=Path, help="YAML config (as configs/live.yaml)")
    live.add_argument("--out", type=Path, help=HELP["out"])
    live.add_argument("--session", help="session id written into events (default: live)")
    live.add_argument("--mqtt", metavar="URL", help=HELP["mqtt"])
    live.add_argument("--annotate", type=Path, metavar="OUT.mp4", help=HELP["annotate"])
    live.add_argument("--attention", action="store_true", default=None,
                        help=HELP["attention"])
    live.add_argument("--web", metavar="[HOST:]PORT", help=HELP["web"])
    _asr_arguments(live)
    live.add_argument("--model", help=HELP["model"])
    live.add_argument("--engine", metavar="URL", help=HELP["engine"])
    live.add_argument("--predictor", help=HELP["predictor"])
    live.set_defaults(func=_live)

    bench.add_parser(commands)
    subscribe.add_parser(commands, HELP)
    serve.add_parser(commands, HELP)
    eval_command.add_parsers(commands, HELP)
    for command in commands.choices.values():  # -v also after the subcommand
        command.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                             help=HELP["verbose"])
    return parser


def _asr_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-asr", dest="asr", action="store_false", default=None,
                        help=HELP["no_asr"])
    parser.add_argument("--asr-model", metavar="PATH", help=HELP["asr_model"])
    # Before the recognizer was on by default, --asr turned it on: still accepted.
    parser.add_argument("--asr", dest="asr", action="store_true", default=None,
                        help=argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    stderr = Console(stderr=True, soft_wrap=True)
    _logging(stderr, args.verbose)
    try:
        return int(args.func(args, stderr))
    except UserError as exc:
        return _fail(str(exc), EXIT_USER)
    except PipelineError as exc:
        if isinstance(exc.cause, UserError):
            return _fail(str(exc.cause), EXIT_USER)
        logging.getLogger("socialstream").debug("stage failure", exc_info=exc.cause)
        return _fail(str(exc), EXIT_FAILURE)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)


def _fail(message: str, code: int) -> int:
    print(f"socialstream: error: {message}", file=sys.stderr, flush=True)
    return code


def _logging(console: Console, verbose: int) -> None:
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)


def _replay_config(args: argparse.Namespace) -> ReplayConfig:
    # --speed means a paced replay: it brings --realtime with it rather than being ignored.
    realtime = True if args.speed is not None and args.realtime is None else args.realtime
    return load_config(args.config, {
        "source": {"realtime": realtime, "speed": args.speed, "video_fps": args.video_fps},
        "output": {"out": args.out, "session": args.session, "annotate": args.annotate,
                   "attention": args.attention, "web": args.web},
        "mqtt": {"url": args.mqtt},
        "recognizer": {"enabled": args.asr, "model": args.asr_model},
        "engine": {"model": args.model, "url": args.engine},
        "predictions": {"predictor": args.predictor},
    }, flags=FLAGS)


def _replay(args: argparse.Namespace, stderr: Console) -> int:
    config = _replay_config(args)
    sinks = _sinks(args, config, session_id(args.media, config))
    if args.transcript is not None and args.no_transcript:
        raise UserError("--transcript FILE and --no-transcript contradict each other: "
                        "give one")
    replay = build_replay(args.media, config, sinks, args.transcript,
                          sidecar=not args.no_transcript)
    _feed_metrics(sinks, replay.pipeline)
    try:
        report = _run_with_progress(replay, config, stderr)
    finally:
        if replay.transcript is not None and replay.transcript.problems:
            stderr.print(f"[yellow]{len(replay.transcript.problems)} malformed transcript "
                         f"line(s) skipped[/] (first: {replay.transcript.problems[0]})",
                         highlight=False)
    if config.output.metrics:
        stderr.print(replay.pipeline.metrics_table())
    _summary(stderr, args.media, replay, report)
    for sink in sinks:
        if isinstance(sink, AnnotatedVideo) and sink.frames:
            stderr.print(f"annotated video: {sink.path} ({sink.frames} frames)",
                         highlight=False)
    return _exit_code(report)


def _live(args: argparse.Namespace, stderr: Console) -> int:
    options = {}
    for pair in args.option:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--option {pair!r}: write it as KEY=VALUE")
        options[key] = value
    config = load_config(args.config, {
        "live": {"give_up_s": args.give_up},
        "output": {"out": args.out, "session": args.session, "annotate": args.annotate,
                   "attention": args.attention, "web": args.web},
        "mqtt": {"url": args.mqtt},
        "recognizer": {"enabled": args.asr, "model": args.asr_model},
        "engine": {"model": args.model, "url": args.engine},
        "predictions": {"predictor": args.predictor},
    }, model=LivePipelineConfig, flags=FLAGS)
    session = check_session(config.output.session) if config.output.session is not None \
        else "live"
    inputs = live_inputs(args.target, fmt=args.format, audio_device=args.audio,
                         listen=args.listen, options=options)
    sinks = _sinks(args, config, session)
    live = build_live(inputs, config, sinks, session)
    _feed_metrics(sinks, live.pipeline)
    stderr.log(f"live session {session!r}: reading {live.source.uri} (Ctrl-C to stop)")
    report = asyncio.run(run_live(live))
    if not live.source.received and not report.interrupted:
        waited = f"giving up after {config.live.give_up_s}s" if config.live.give_up_s \
            else "the input ended"
        raise UserError(f"{args.target}: no data before {waited}; check that the camera or "
                        "stream is there and sending")
    if config.output.metrics:
        stderr.print(live.pipeline.metrics_table())
    turns = live.pipeline.metrics().get("turns", {}).get("items_out", 0)
    source, fell_behind = live.source, live.fallbacks
    stderr.print(f"{args.target}: {turns} turns in {report.wall_s:.1f}s; "
                 f"{source.reconnects} reconnects, {source.resyncs} resyncs of the clock, "
                 f"{source.video_dropped} stale video frames dropped at the source"
                 + (f", {source.late} late items" if source.late else "")
                 + (f"; Light-ASD fell behind {fell_behind} times" if fell_behind else ""),
                 highlight=False)
    if live.inbox is not None:
        stderr.print(live.inbox.summary(), highlight=False)
    return 0 if live.stopped_remotely else _exit_code(report)


def _exit_code(report: ReplayReport) -> int:
    """0, or 128 + the signal that stopped the run after draining (130 for Ctrl-C, 143 for
    SIGTERM, 129 for SIGHUP), as shells report a process that a signal ended."""
    if report.stopped_by is not None:
        return 128 + report.stopped_by
    return EXIT_INTERRUPTED if report.interrupted else 0


def _sinks(args: argparse.Namespace, config: ReplayConfig, session: str) -> list[Stage]:
    names = config.perception.names
    run = new_run()  # one per run, shared by every sink: ids match across outputs
    out = config.output.out
    refuse_one_file_twice(out, config.output.annotate)
    if args.json:  # one sink for stdout and --out: both get the same lines in one order
        sinks: list[Stage] = [JsonlSink(session, out, names, run, echo=True)]
    else:
        sinks = [ConsoleSink(Console(soft_wrap=True), names)]
        if out is not None:
            sinks.append(JsonlSink(session, out, names, run))
    mqtt, engine = config.mqtt, None
    if bridged(config.engine):
        if mqtt.url not in (None, config.engine.url):
            raise UserError(f"--engine {config.engine.url} and --mqtt {mqtt.url}: the turns for "
                            "the engine go out on the --mqtt broker; give one broker")
        mqtt = mqtt.model_copy(update={"url": config.engine.url})
        if config.predictions.predictor != "none":
            engine = config.engine
    if mqtt.url is not None:
        sinks.append(MqttSink(mqtt, session, names, run, engine=engine,
                              predictor=config.predictions.predictor))
    if config.output.annotate is not None:
        sinks.append(AnnotatedVideo(config.output.annotate, names))
    if config.output.web is not None:
        sinks.append(WebView(config.output.web, session, names, run))
    return sinks


def _feed_metrics(sinks: list[Stage], pipeline: Pipeline) -> None:
    """The web view's stages table."""
    for sink in sinks:
        if isinstance(sink, WebView):
            sink.hub.metrics = pipeline.metrics


def _run_with_progress(replay: Replay, config: ReplayConfig, stderr: Console) -> ReplayReport:
    show = config.output.progress and stderr.is_terminal and replay.info.duration
    if not show:
        return asyncio.run(run_replay(replay, drain_on_sigint=True))
    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed:.1f}/{task.total:.1f}s media"), TimeRemainingColumn())
    with Progress(*columns, console=stderr, transient=True) as progress:
        task = progress.add_task(f"replaying {Path(replay.media.uri).name}",
                                 total=replay.info.duration)

        def advance(pts: float) -> None:
            progress.update(task, completed=min(pts, replay.info.duration))

        return asyncio.run(run_replay(replay, drain_on_sigint=True, on_progress=advance))


def _summary(stderr: Console, media: str, replay: Replay, report: ReplayReport) -> None:
    turns = replay.pipeline.metrics().get("turns", {}).get("items_out", 0)
    rtf = report.real_time_factor
    speed = f" (real-time factor {rtf:.3f})" if rtf is not None else ""
    state = "[yellow]interrupted[/]: " if report.interrupted else ""
    transcript = ""
    if replay.transcript is not None:
        transcript = (f"; transcript {replay.transcript.path}: {len(replay.transcript.lines)} "
                      f"lines, {len(replay.transcript.problems)} skipped")
    decode = f"; {replay.media.decode_errors} undecodable packets skipped" \
        if replay.media.decode_errors else ""
    if (short := replay.media.ended_early) is not None and not report.interrupted:
        decode += (f"; [yellow]the media ended at {short[0]:.1f}s of the {short[1]:.1f}s its "
                   "container announces (truncated?)[/]")
    stderr.print(f"{state}{media}: {turns} turns in {report.wall_s:.2f}s{speed}"
                 f"{transcript}{decode}", highlight=False)


if __name__ == "__main__":
    sys.exit(main())
