"""`socialstream serve`: the engine on Ray Serve, one model per replica, many sessions each
(`stream/serving/service.py`)."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import math
import os
import signal
import socket
import threading
from pathlib import Path

from rich.console import Console

from pipelines.config import load_config
from stream.broker import MqttConfig, broker_address
from stream.engine.config import PredictorConfig
from stream.errors import UserError
from stream.serving.service import TOKEN_ENV
from stream.view.web import loopback, parse_address

log = logging.getLogger(__name__)


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
    sub.add_argument("--address", help="a running Ray cluster to deploy to (default: a "
                     "private local instance, never one already running on the machine)")
    sub.add_argument("--token-file", type=Path,
                     help="bearer tokens a request must carry one of, one per line; each "
                          "token's sessions are its own (default: $SOCIALSTREAM_ENGINE_TOKEN; "
                          "neither: no token, for a service on loopback only)")
    sub.add_argument("--max-sessions", type=int, default=1000,
                     help="sessions the turn log holds at most; a new one beyond is refused "
                          "(507) until idle ones are pruned")
    sub.add_argument("--max-body-mb", type=float, default=32.0,
                     help="largest turn request taken (413 beyond)")
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
    from stream.serving.service import APP, deployment
    from stream.serving.turnlog import TurnLog, TurnLogError

    numbers = (args.budget_mb, args.cpus_per_replica, args.log_keep_hours, args.max_body_mb)
    if args.replicas < 1 or args.max_sessions < 1 or args.sessions_per_replica < 1 \
            or not all(math.isfinite(n) and n > 0 for n in numbers):
        raise UserError("--replicas, --sessions-per-replica, --budget-mb, "
                        "--cpus-per-replica, --log-keep-hours, --max-sessions and "
                        "--max-body-mb must be positive numbers")
    if args.max_replicas is not None and args.max_replicas < args.replicas:
        raise UserError(f"--max-replicas {args.max_replicas} is below --replicas "
                        f"{args.replicas}")
    settings = load_config(args.config, {"engine": {"model": args.model},
                                         "mqtt": {"url": args.mqtt}})
    config = settings.engine
    if config.model is None:
        raise UserError("serve needs a model: --model NAME or engine.model in --config")
    host, port = parse_address(args.http, "--http")
    _refuse_busy(host, port)
    tokens = _checked(_tokens(args.token_file), str(args.token_file or f"${TOKEN_ENV}"))
    if not tokens and not loopback(host):
        log.warning("--http %s: reachable from other machines without a token; give "
                    "--token-file or set $%s", args.http, TOKEN_ENV)
    if settings.mqtt.url is not None:
        broker_address(settings.mqtt.url)  # a bad URL is an error before Ray starts
    try:
        TurnLog(args.log_dir)  # the replicas' folder: a bad one is an error here, once
    except TurnLogError as e:
        raise UserError(str(e)) from None
    # A private instance unless told otherwise: ray.init() alone joins any Ray already
    # running on the machine, and another user's service with it.
    ray.init(address=args.address or "local", include_dashboard=False, log_to_driver=False)
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
                             max_replicas=args.max_replicas, tokens=tokens,
                             max_sessions=args.max_sessions,
                             max_body=int(args.max_body_mb * 2**20)),
                  name=f"{APP}-{port}", route_prefix="/")
        replicas = (f"{args.replicas}-{args.max_replicas}" if args.max_replicas
                    else str(args.replicas))
        stderr.print(f"serving {config.model} on http://{host}:{port}/ ({replicas} "
                     f"replica(s), turn log {args.log_dir}); POST a turn with the header "
                     "serve_multiplexed_model_id: SESSION; Ctrl-C stops", highlight=False)
        if settings.mqtt.url is None:
            stop.wait()
        else:
            local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
            engine = config.model_copy(update={"model": None, "url": f"http://{local}:{port}/",
                                               "token": tokens[0] if tokens else None})
            stderr.print(f"answering turns from {settings.mqtt.url} "
                         f"({settings.mqtt.prefix}/+/turn)", highlight=False)
            asyncio.run(_bridge(settings.mqtt, engine, args.log_dir, stop))
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


async def _bridge(mqtt: MqttConfig, engine: PredictorConfig, log_dir: Path,
                  stop: threading.Event) -> None:
    from stream.serving.bridge import MqttBridge
    from stream.serving.turnlog import TurnLog

    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    threading.Thread(target=lambda: (stop.wait(), loop.call_soon_threadsafe(stopped.set)),
                     daemon=True).start()
    await MqttBridge(mqtt, engine, TurnLog(log_dir)).run(stopped)


def _refuse_busy(host: str, port: int) -> None:
    """Serve's proxy shares a port (SO_REUSEPORT) with whatever listens there, and would
    split sessions between two services: a port in use is refused before Ray starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: a listener makes the bind fail, a closed connection does not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(f"--http {host}:{port}: the port is in use (another serve, "
                                "or one still shutting down); choose another port or stop "
                                "it first") from None
            raise UserError(f"--http {host}:{port}: cannot listen there ({e.strerror}); "
                            "choose an address of this machine") from None


def _tokens(path: Path | None) -> tuple[str, ...]:
    if path is None:
        token = os.environ.get(TOKEN_ENV, "").strip()
        return (token,) if token else ()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--token-file {path}: cannot read it ({e})") from None
    tokens = tuple(t.strip() for t in lines if t.strip())
    if not tokens:
        raise UserError(f"--token-file {path}: no token in it (one per line)")
    return tokens


def _checked(tokens: tuple[str, ...], where: str) -> tuple[str, ...]:
    """HTTP headers carry ASCII: a token with other characters could never match."""
    for token in tokens:
        if not token.isascii() or not token.isprintable():
            raise UserError(f"{where}: a token must be printable ASCII")
    return tokens
