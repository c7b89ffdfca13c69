"""`socialstream serve`: the engine on Ray Serve, one model per replica, many sessions each
(`stream/engine/service.py`)."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from rich.console import Console

from pipelines.config import load_config
from stream.errors import UserError
from stream.view.web import parse_address


def add_parser(commands: argparse._SubParsersAction, help_texts: dict[str, str]) -> None:
    sub = commands.add_parser(
        "serve", help="serve the engine to many sessions on Ray Serve (extra: [serve])")
    sub.add_argument("--model", help=help_texts["model"])
    sub.add_argument("--config", type=Path,
                     help="YAML config whose engine.* settings the replicas use")
    sub.add_argument("--replicas", type=int, default=1, help="replicas, each with the model")
    sub.add_argument("--cpus-per-replica", type=float, default=1.0,
                     help="Ray CPUs reserved per replica")
    sub.add_argument("--sessions-per-replica", type=int, default=64,
                     help="sessions a replica keeps affinity for (Serve's multiplexing)")
    sub.add_argument("--budget-mb", type=float, default=4096.0,
                     help="memory budget of one replica's session caches")
    sub.add_argument("--log-dir", type=Path, default=Path("engine-log"),
                     help="the sessions' turn log, shared by all replicas (a shared file "
                          "system on a cluster); sessions are rebuilt from it")
    sub.add_argument("--http", metavar="[HOST:]PORT", default="127.0.0.1:8000",
                     help="where Serve listens for turns (default 127.0.0.1:8000)")
    sub.add_argument("--address", help="a running Ray cluster (default: a local instance)")
    sub.set_defaults(func=run)


def run(args: argparse.Namespace, stderr: Console) -> int:
    try:
        import ray
        from ray import serve
    except ImportError:
        raise UserError("serve needs Ray Serve: pip install 'socialstream[serve]'") from None
    from stream.engine.service import APP, deployment
    from stream.engine.turnlog import TurnLog, TurnLogError

    if args.replicas < 1 or args.budget_mb <= 0 or args.cpus_per_replica <= 0:
        raise UserError("--replicas, --budget-mb and --cpus-per-replica must be positive")
    config = load_config(args.config, {"engine": {"model": args.model}}).engine
    if config.model is None:
        raise UserError("serve needs a model: --model NAME or engine.model in --config")
    host, port = parse_address(args.http)
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
                             str(args.log_dir.resolve()), replicas=args.replicas,
                             sessions_per_replica=args.sessions_per_replica,
                             cpus_per_replica=args.cpus_per_replica),
                  name=APP, route_prefix="/")
        stderr.print(f"serving {config.model} on http://{host}:{port}/ ({args.replicas} "
                     f"replica(s), turn log {args.log_dir}); POST a turn with the header "
                     "serve_multiplexed_model_id: SESSION; Ctrl-C stops", highlight=False)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
