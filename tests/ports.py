"""Waiting for a child process to listen, instead of sleeping a fixed time that a slower
machine's start-up (imports, models) overruns."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

STATES = {"udp": "07", "tcp": "0A"}
"""/proc/net state of a bound UDP socket and of a listening TCP one."""


def wait_listening(port: int, process: subprocess.Popen[str], kind: str = "udp",
                   deadline_s: float = 60) -> None:
    """Until something on this machine listens on `port` (`kind` udp or tcp); fails at
    once if `process` ends first."""
    until = time.monotonic() + deadline_s
    wanted = f":{port:04X}"
    while time.monotonic() < until:
        assert process.poll() is None, process.communicate()[1][-2000:]
        for table in (f"/proc/net/{kind}", f"/proc/net/{kind}6"):
            if not Path(table).exists():
                continue
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[1].endswith(wanted) and fields[3] == STATES[kind]:
                    time.sleep(0.3)  # bound; the reader is on its way into it
                    return
        time.sleep(0.1)
    raise AssertionError(f"nothing listened on {kind} port {port} within {deadline_s} s")
