"""`socialstream serve`: the engine on Ray Serve, one model per replica, many sessions each
(`stream/engine/service.py`)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
from pathlib import Path
from typing import Any

from rich.console import Console

from pipelines.config import load_config
from stream.broker import MqttConfig, broker_address
from stream.engine.config import PredictorConfig
from stream.errors import UserError
from stream.view.web import parse_address


def add_parser(commands: argparse._SubParsersAction, help_texts: dict[str, str]) -> None:
    sub = commands.add_parser(
        "serve", help="serve the engine to many sessions on Ray Serve (extra: [serve])")
    sub.add_argument("--model", help=help_texts["model"])
    sub.add_argument("--config", type=Path,
                     help="YAML config whose engine.* settings the replicas use")
    sub.add_argument("--replicas", type=int, default=1, help="replicas, each with the model "
                     "(with --max-replicas: the fewest kept)")
    sub.add_argument("--max-replicas", type=int,
                     help="scale with load up to this many replicas (Serve's autoscaling: a "
                          "replica is added while each has more than one turn waiting)")
    sub.add_argument("--cpus-per-replica", type=float, default=1.0,
                     help="Ray CPUs reserved per replica")
    sub.add_argument("--sessions-per-replica", type=int, default=64,
                     help="sessions a replica keeps affinity for (Serve's multiplexing)")
    sub.add_argument("--budget-mb", type=float, default=4096.0,
                     help="memory budget of one replica's session caches")
    sub.add_argument("--log-dir", type=Path, default=Path("engine-log"),
                     help="the sessions' turn log, shared by all replicas (a shared file "
                          "system on a cluster); sessions are rebuilt from it")
    sub.add_argument("--log-keep-hours", type=float, default=24.0,
                     help="a session without a turn for this long is forgotten and its log "
                          "removed (default 24; if it comes back it starts afresh)")
    sub.add_argument("--http", metavar="[HOST:]PORT", default="127.0.0.1:8000",
                     help="where Serve listens for turns (default 127.0.0.1:8000)")
    sub.add_argument("--address", help="a running Ray cluster (default: a local instance)")
    sub.add_argument("--mqtt", metavar="URL",
                     help="also answer turns from this broker (mqtt://host:port): turns of "
                          "<prefix>/+/turn from edges started with --engine mqtt://..., "
                          "predictions to <prefix>/<session>/prediction")
    sub.set_defaults(func=run)


def run(args: argparse.Namespace, stderr: Console) -> int:
    try:
        import ray
        from ray import serve
    except ImportError:
        raise UserError("serve needs Ray Serve: pip install 'socialstream[serve]'") from None
    from stream.engine.service import APP, deployment
    from stream.engine.turnlog import TurnLog, TurnLogError

    if args.replicas < 1 or args.budget_mb <= 0 or args.cpus_per_replica <= 0 \
            or args.log_keep_hours <= 0:
        raise UserError("--replicas, --budget-mb, --cpus-per-replica and --log-keep-hours "
                        "must be positive")
    if args.max_replicas is not None and args.max_replicas < args.replicas:
        raise UserError(f"--max-replicas {args.max_replicas} is below --replicas "
                        f"{args.replicas}")
    settings = load_config(args.config, {"engine": {"model": args.model},
                                         "mqtt": {"url": args.mqtt}})
    config = settings.engine
    if config.model is None:
        raise UserError("serve needs a model: --model NAME or engine.model in --config")
    host, port = parse_address(args.http)
    if settings.mqtt.url is not None:
        broker_address(settings.mqtt.url)  # a bad URL is an error before Ray starts
    try:
        TurnLog(args.log_dir)  # the replicas' folder: a bad one is an error here, once
    except TurnLogError as e:
        raise UserError(str(e)) from None
    options: dict[str, Any] = {"address": args.address} if args.address else {}
    ray.init(include_dashboard=False, log_to_driver=False, **options)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(deployment(config.model_dump(), int(args.budget_mb * 2**20),
                             str(args.log_dir.resolve()), keep_s=args.log_keep_hours * 3600,
                             replicas=args.replicas,
                             sessions_per_replica=args.sessions_per_replica,
                             cpus_per_replica=args.cpus_per_replica,
                             max_replicas=args.max_replicas),
                  name=APP, route_prefix="/")
        replicas = (f"{args.replicas}-{args.max_replicas}" if args.max_replicas
                    else str(args.replicas))
        stderr.print(f"serving {config.model} on http://{host}:{port}/ ({replicas} "
                     f"replica(s), turn log {args.log_dir}); POST a turn with the header "
                     "serve_multiplexed_model_id: SESSION; Ctrl-C stops", highlight=False)
        if settings.mqtt.url is None:
            stop.wait()
        else:
            local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
            engine = config.model_copy(update={"model": None,
                                               "url": f"http://{local}:{port}/"})
            stderr.print(f"answering turns from {settings.mqtt.url} "
                         f"({settings.mqtt.prefix}/+/turn)", highlight=False)
            asyncio.run(_bridge(settings.mqtt, engine, args.log_dir, stop))
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


async def _bridge(mqtt: MqttConfig, engine: PredictorConfig, log_dir: Path,
                  stop: threading.Event) -> None:
    from stream.engine.bridge import MqttBridge
    from stream.engine.turnlog import TurnLog

    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    threading.Thread(target=lambda: (stop.wait(), loop.call_soon_threadsafe(stopped.set)),
                     daemon=True).start()
    await MqttBridge(mqtt, engine, TurnLog(log_dir)).run(stopped)
