"""`socialstream bench soak`: a live session held for a long time on a looping stream.

ffmpeg pushes the clip in a loop over UDP at its own pace to `socialstream live`,
which publishes to a private Mosquitto; a subscriber (a persistent session, QoS 1)
counts what reaches the broker. The sender is restarted every `--sender-every`
minutes (its timestamps jump back: a camera or encoder that reconnects) and the
broker every `--broker-every` minutes. Every `--sample-every` seconds the live
process is sampled: resident memory, open files, turns and predictions so far,
prediction latency, and which speaker model runs (from its warnings).

Reported: whether the session lasted, restarts survived, the turns in the media
sent (from a replay of the clip) against the turns received, what the broker
delivered against what the session printed, RSS after warm-up and its slope
(least squares, MB per hour), and the samples as CSV with RSS plotted as SVG.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import psutil
import yaml
from rich.console import Console

from pipelines.bench.mosquitto import PrivateBroker, free_port
from pipelines.config import load_config
from pipelines.run.live import LivePipelineConfig
from pipelines.run.replay import replay_and_collect
from stream.errors import UserError
from stream.sources.media import probe

WARM_UP_S = 300.0
"""RSS growth and slope are measured after the first five minutes (models loaded, caches
and the conversation's bounded history filled)."""
SETTLE_S = 2.0
"""A turn counts as sent once the media past its end by this much has been sent (the turn
closes after its hang-over)."""
SESSION = "soak"


@dataclass
class Sample:
    t: float
    rss_mb: float
    open_files: int
    turns: int
    predictions: int
    latency_p50_s: float | None
    speaker_model: str


@dataclass
class _Seen:
    """What the live session printed, read off its stdout as it goes."""

    turns: list[str] = field(default_factory=list)
    predictions: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self, stream: Any) -> None:
        for line in stream:
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                schema = str(event.get("schema", ""))
                with self.lock:
                    if schema.startswith("socialstream.turn/"):
                        self.turns.append(event["id"])
                    elif schema.startswith("socialstream.prediction/"):
                        self.predictions.append(event["id"])
                        self.latencies.append(float(event["latency_s"]))


class _Model:
    """Which speaker model the session runs, from its log (stderr), line by line."""

    def __init__(self, log: Path, configured: str) -> None:
        self.log, self.now, self.fallbacks = log, configured, 0
        self._read = 0

    def update(self) -> str:
        with self.log.open(errors="replace") as text:
            text.seek(self._read)
            for line in text:
                if "mouth motion until" in line or "mouth motion from now on" in line:
                    self.now, self.fallbacks = "mouth", self.fallbacks + 1
                elif "Light-ASD again from" in line:
                    self.now = "light_asd"
            self._read = text.tell()
        return self.now


class _Subscriber:
    """A persistent MQTT session (clean_session off, QoS 1): the broker keeps its
    subscription and queues for it across the broker's restarts."""

    def __init__(self, port: int) -> None:
        self.ids: dict[str, set[str]] = {"turn": set(), "prediction": set()}
        self.messages = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-counter",
                                  clean_session=False)
        self.client.on_connect = self._connected
        self.client.on_message = self._message
        self.client.reconnect_delay_set(0.2, 2.0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _connected(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(f"socialstream/{SESSION}/+", qos=1)

    def _message(self, _client: mqtt.Client, _data: Any, message: mqtt.MQTTMessage) -> None:
        kind = message.topic.rsplit("/", 1)[-1]
        if kind in self.ids:
            self.messages += 1
            with contextlib.suppress(ValueError, KeyError):
                self.ids[kind].add(json.loads(message.payload)["id"])

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _sender(ffmpeg: str, media: str, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", media,
         "-c", "copy", "-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(process: subprocess.Popen[Any], sig: int = signal.SIGTERM,
          timeout: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def turns_sent(ends: list[float], period: float, sent: float) -> int:
    """Turns of a clip looped for `sent` seconds whose ends (seconds into the clip) were
    sent, with `SETTLE_S` after them."""
    return sum(int((sent - end - SETTLE_S) // period) + 1 for end in ends
               if sent >= end + SETTLE_S)


class _Sender:
    """ffmpeg looping the clip; each run's start and end are kept, to count what it sent."""

    def __init__(self, ffmpeg: str, media: str, port: int) -> None:
        self.ffmpeg, self.media, self.port = ffmpeg, media, port
        self.runs: list[tuple[float, float]] = []
        self.process: subprocess.Popen[bytes] | None = None
        self.began = 0.0

    def start(self) -> None:
        self.process, self.began = _sender(self.ffmpeg, self.media, self.port), time.monotonic()

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.runs.append((self.began, time.monotonic()))
            self.process = None


def bench_soak(args: argparse.Namespace, stderr: Console) -> dict[str, Any]:
    for flag in ("minutes", "sample_every", "sender_every", "broker_every"):
        if not getattr(args, flag) > 0:  # also refuses nan
            raise UserError(f"--{flag.replace('_', '-')} must be a number > 0")
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise UserError("bench soak needs ffmpeg to push the stream (apt-get install ffmpeg)")
    config = load_config(Path(args.config) if args.config else None,
                         {"recognizer": {"enabled": not args.no_asr},
                          "output": {"progress": False}}, model=LivePipelineConfig)
    user = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    info = probe(args.media)
    if not info.duration:
        raise UserError(f"{args.media}: no duration; bench soak loops a file")
    out = Path(args.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out}: cannot make the output folder ({exc.strerror}); give "
                        "another --out-dir") from exc
    # An earlier soak's broker store and spool would be counted as this one's; only
    # those files go, never a folder of the user's.
    for leftover in (out / "broker" / "mosquitto.db", out / "spool" / f"{SESSION}.sqlite"):
        leftover.unlink(missing_ok=True)
    stderr.log(f"the turns of {args.media}, from a replay, to count what a loop sends")
    _, reference = replay_and_collect(args.media, config)
    ends = [turn.end for turn in reference]
    live_config = out / "live.yaml"
    live_config.write_text(yaml.safe_dump(
        {**(user or {}), "mqtt": {**(user or {}).get("mqtt", {}),
                                  "spool_dir": str(out / "spool")}}))
    stream_port = free_port("udp")
    log_path = out / "live.log"
    seen = _Seen()
    model = _Model(log_path, "light_asd" if config.perception.speaker.model == "light_asd"
                   and info.has_audio else "mouth")
    samples: list[Sample] = []
    survived = {"sender": 0, "broker": 0}
    alive = True
    with contextlib.ExitStack() as stack:
        stack.callback(signal.signal, signal.SIGTERM,
                       signal.signal(signal.SIGTERM, _interrupt))  # children stop too
        broker = stack.enter_context(PrivateBroker(out / "broker"))
        subscriber = _Subscriber(broker.port)
        stack.callback(subscriber.close)
        command = [sys.executable, "-m", "pipelines.cli", "live",
                   f"udp://127.0.0.1:{stream_port}?fifo_size=1000000&overrun_nonfatal=1",
                   "--json", "--mqtt", broker.url, "--session", SESSION,
                   "--out", str(out / "events.jsonl"), "--config", str(live_config)]
        command += ["--no-asr"] if args.no_asr else []
        with log_path.open("w") as log:
            live = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True,
                                    start_new_session=True)
        stack.callback(_stop, live, signal.SIGINT, 60.0)  # drains, as Ctrl-C does
        reader = threading.Thread(target=seen.read, args=(live.stdout,), daemon=True)
        reader.start()
        process = psutil.Process(live.pid)
        _wait_bound(process, live, stream_port, log_path)
        sender = _Sender(ffmpeg, args.media, stream_port)
        stack.callback(sender.stop)
        sender.start()
        writer = _Samples(out / "samples.csv")
        stack.callback(writer.close)
        began, length = time.monotonic(), args.minutes * 60
        next_sender, next_broker = args.sender_every * 60, args.broker_every * 60
        while (elapsed := time.monotonic() - began) < length:
            time.sleep(min(args.sample_every, max(0.0, length - elapsed)))
            elapsed = time.monotonic() - began
            if live.poll() is not None:
                alive = False
                stderr.log(f"[red]the live session exited ({live.returncode}) at {elapsed:.0f} s")
                break
            # No restart in the last sample: nothing would measure what it did.
            if next_sender <= elapsed < length - args.sample_every:
                sender.stop()
                sender.start()
                survived["sender"] += 1
                next_sender += args.sender_every * 60
                stderr.log(f"{elapsed:.0f} s: sender restarted")
            if next_broker <= elapsed < length - args.sample_every:
                broker.restart()
                survived["broker"] += 1
                next_broker += args.broker_every * 60
                stderr.log(f"{elapsed:.0f} s: broker restarted")
            samples.append(_sample(elapsed, process, seen, model))
            writer.add(samples[-1])
            last = samples[-1]
            stderr.log(f"{elapsed:.0f} s: RSS {last.rss_mb:.0f} MB, {last.open_files} files, "
                       f"{last.turns} turns, {last.predictions} predictions, "
                       f"{last.speaker_model}")
        sender.stop()
        if live.poll() is None:
            time.sleep(SETTLE_S + 1.0)  # the turn that closes after the last words
        _stop(live, signal.SIGINT, 60.0)
        reader.join(timeout=10)
        _drain(subscriber, seen)
    sent = sum(turns_sent(ends, info.duration, stop - start) for start, stop in sender.runs)
    figures = _figures(samples, seen, subscriber, sent, alive, survived, model, args.minutes)
    figures["exit_code"] = live.returncode
    _write(out, samples, figures)
    return figures


class _Samples:
    """samples.csv, a row as each sample is taken: an interrupted soak keeps them."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("w", newline="")
        self.writer = csv.writer(self.file)
        self.writer.writerow(Sample.__dataclass_fields__)

    def add(self, sample: Sample) -> None:
        self.writer.writerow([getattr(sample, name) for name in Sample.__dataclass_fields__])
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _wait_bound(process: psutil.Process, live: subprocess.Popen[str], port: int, log: Path,
                deadline_s: float = 180.0) -> None:
    """Until the session reads the stream's port (models load first): what is sent before
    that is lost, and would be counted as turns lost."""
    until = time.monotonic() + deadline_s
    while time.monotonic() < until:
        if live.poll() is not None:
            raise UserError(f"the live session ended before it read the stream "
                            f"({live.returncode}); its log: {log}")
        if any(c.laddr and c.laddr.port == port for c in process.net_connections(kind="udp")):
            return
        time.sleep(0.1)
    raise UserError(f"the live session did not open udp port {port} in {deadline_s:.0f} s; "
                    f"its log: {log}")


def _sample(elapsed: float, process: psutil.Process, seen: _Seen, model: _Model) -> Sample:
    with seen.lock:
        turns, predictions = len(seen.turns), len(seen.predictions)
        recent = seen.latencies[-50:]
    return Sample(t=round(elapsed, 1), rss_mb=round(process.memory_info().rss / 2**20, 1),
                  open_files=process.num_fds(), turns=turns, predictions=predictions,
                  latency_p50_s=round(float(np.median(recent)), 3) if recent else None,
                  speaker_model=model.update())


def _drain(subscriber: _Subscriber, seen: _Seen, quiet_s: float = 5.0) -> None:
    """Wait for the broker to deliver what the session printed, or for `quiet_s` without
    anything new arriving."""
    last, since = -1, time.monotonic()
    while time.monotonic() - since < quiet_s:
        count = len(subscriber.ids["turn"]) + len(subscriber.ids["prediction"])
        if count >= len(seen.turns) + len(seen.predictions):
            return
        if count != last:
            last, since = count, time.monotonic()
        time.sleep(0.2)


def _figures(samples: list[Sample], seen: _Seen, subscriber: _Subscriber, sent: int,
             alive: bool, survived: dict[str, int], model: _Model,
             minutes: float) -> dict[str, Any]:
    warm = [s for s in samples if s.t >= min(WARM_UP_S, 0.25 * minutes * 60)]
    slope = None
    if len(warm) >= 3:
        hours = np.array([s.t for s in warm]) / 3600
        slope = round(float(np.polyfit(hours, [s.rss_mb for s in warm], 1)[0]), 1)
    latencies = np.array(seen.latencies) if seen.latencies else np.zeros(1)
    light = [s for s in samples if s.speaker_model == "light_asd"]
    return {
        "minutes": minutes,
        "session_lasted": alive,
        "sender_restarts_survived": survived["sender"],
        "broker_restarts_survived": survived["broker"],
        "turns_sent": sent,
        "turns_received": len(seen.turns),
        "turns_lost": max(0, sent - len(seen.turns)),
        "turns_extra": max(0, len(seen.turns) - sent),
        "predictions": len(seen.predictions),
        "turns_on_broker": len(subscriber.ids["turn"]),
        "predictions_on_broker": len(subscriber.ids["prediction"]),
        "lost_on_broker": len(set(seen.turns) - subscriber.ids["turn"])
        + len(set(seen.predictions) - subscriber.ids["prediction"]),
        "broker_duplicates": subscriber.messages - len(subscriber.ids["turn"])
        - len(subscriber.ids["prediction"]),
        "rss_after_warm_up_mb": warm[0].rss_mb if warm else None,
        "rss_end_mb": samples[-1].rss_mb if samples else None,
        "rss_growth_after_warm_up_mb": round(warm[-1].rss_mb - warm[0].rss_mb, 1)
        if warm else None,
        "rss_slope_mb_per_hour": slope,
        "open_files_max": max((s.open_files for s in samples), default=0),
        "prediction_latency_p50_s": round(float(np.percentile(latencies, 50)), 3),
        "prediction_latency_p95_s": round(float(np.percentile(latencies, 95)), 3),
        "light_asd_share_of_samples": round(len(light) / len(samples), 3) if samples else 0.0,
        "light_asd_fallbacks": model.fallbacks,
    }


def _write(out: Path, samples: list[Sample], figures: dict[str, Any]) -> None:
    (out / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    (out / "figures.md").write_text(markdown_table(figures))
    (out / "rss.svg").write_text(rss_svg(samples, figures))


def markdown_table(figures: dict[str, Any]) -> str:
    """The figures as the docs show them, with the machine they were measured on."""
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU") \
        if Path("/proc/cpuinfo").exists() else "unknown CPU"
    rows = "".join(f"| {key} | {value} |\n" for key, value in figures.items())
    return (f"Measured by `socialstream bench soak` on {psutil.cpu_count()} cores of "
            f"{cpu}, {psutil.virtual_memory().total / 2**30:.0f} GiB.\n\n"
            f"| figure | value |\n| --- | --- |\n{rows}")


def rss_svg(samples: list[Sample], figures: dict[str, Any], width: int = 640,
            height: int = 240) -> str:
    """Resident memory over the session, a plain line plot (no plotting library)."""
    left, bottom, pad = 56, 36, 12
    if not samples:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"/>'
    t_max = max(s.t for s in samples) or 1.0
    low = min(s.rss_mb for s in samples)
    high = max(s.rss_mb for s in samples)
    low, high = np.floor(low / 50) * 50, np.ceil(high / 50) * 50 + 50

    def x(t: float) -> float:
        return left + (width - left - pad) * t / t_max

    def y(mb: float) -> float:
        return pad + (height - bottom - pad) * (1 - (mb - low) / (high - low))

    points = " ".join(f"{x(s.t):.1f},{y(s.rss_mb):.1f}" for s in samples)
    grid = "".join(
        f'<line x1="{left}" x2="{width - pad}" y1="{y(mb):.1f}" y2="{y(mb):.1f}" '
        f'stroke="#ddd"/><text x="{left - 6}" y="{y(mb) + 4:.1f}" text-anchor="end">'
        f'{mb:.0f}</text>' for mb in np.arange(low, high + 1, 50))
    minutes = "".join(
        f'<text x="{x(m * 60):.1f}" y="{height - bottom + 16}" text-anchor="middle">{m:.0f}'
        f'</text>' for m in np.linspace(0, t_max / 60, 7))
    title = (f"RSS (MB) over {t_max / 60:.0f} min; slope after warm-up "
             f"{figures.get('rss_slope_mb_per_hour')} MB/h")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'font-family="sans-serif" font-size="11">'
            f'<rect width="100%" height="100%" fill="white"/>{grid}{minutes}'
            f'<text x="{left}" y="{height - 4}">minutes</text>'
            f'<text x="{width - pad}" y="{pad + 2}" text-anchor="end">{title}</text>'
            f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{points}"/>'
            f'</svg>\n')
