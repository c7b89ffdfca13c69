"""A private Mosquitto for a benchmark: its own port, and persistence, so that it can be
restarted under a session without losing what it had accepted."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from stream.errors import UserError


def free_port(kind: str = "tcp") -> int:
    """A port nothing on this machine holds now (`kind`: tcp or udp)."""
    with socket.socket(type=socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class PrivateBroker:
    def __init__(self, folder: Path, port: int | None = None, extra: str = "") -> None:
        """`extra`: more lines for mosquitto.conf (a TLS listener's files)."""
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise UserError("no broker: install mosquitto (apt-get install mosquitto) or pass "
                            "--mqtt URL")
        self.exe, self.folder = exe, folder
        self.port = port or free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.config = folder / "mosquitto.conf"
        folder.mkdir(parents=True, exist_ok=True)
        # As root, mosquitto drops to its own user, which cannot write this folder:
        # persistence would silently fail.
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                               f"persistence true\npersistence_location {folder}/\n"
                               "autosave_interval 1\n"
                               + ("user root\n" if os.geteuid() == 0 else "") + extra)
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self, timeout: float = 10.0) -> PrivateBroker:
        self.process = subprocess.Popen([self.exe, "-c", str(self.config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not listening(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise UserError(f"mosquitto did not start on port {self.port} "
                                f"({self.config})")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """SIGTERM: mosquitto saves what it holds before it exits."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()
        self.restarts += 1

    def __enter__(self) -> PrivateBroker:
        try:
            return self.start()
        except BaseException:  # an interrupt while it starts: not left running
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
