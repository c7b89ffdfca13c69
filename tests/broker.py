"""A real Mosquitto broker per test, on a free port, with persistence so it can restart."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from pipelines.bench.mosquitto import PrivateBroker, free_port

__all__ = ["Broker", "free_port", "make_certificates", "require_mosquitto"]


def require_mosquitto() -> str:
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto"
                                        if Path("/usr/sbin/mosquitto").exists() else None)
    if exe is None or shutil.which("mosquitto_sub") is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto and mosquitto-clients must be installed in CI (.ci/run does)")
        pytest.skip("mosquitto not installed here (apt-get install mosquitto mosquitto-clients)")
    return exe


def make_certificates(folder: Path) -> Path:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it (openssl);
    returns the CA file a client verifies the broker with."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=socialstream test CA", "-keyout", "ca.key", "-out", "ca.crt")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt")
    return folder / "ca.crt"


class Broker(PrivateBroker):
    """A restartable Mosquitto (`pipelines.bench.mosquitto`), optionally with TLS, and the
    mosquitto_sub helpers the tests read it with."""

    def __init__(self, folder: Path, port: int | None = None, tls: bool = False) -> None:
        require_mosquitto()
        folder.mkdir(parents=True, exist_ok=True)
        self.ca_file = make_certificates(folder) if tls else None
        super().__init__(folder, port, (f"cafile {folder}/ca.crt\ncertfile {folder}/server.crt\n"
                                        f"keyfile {folder}/server.key\n") if tls else "")
        if tls:
            self.url = f"mqtts://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> Broker:
        super().start(timeout)
        return self

    def subscribe(self, *topics: str, count: int, timeout: float = 90,
                  extra: tuple[str, ...] = ()) -> subprocess.Popen[str]:
        """mosquitto_sub printing `topic payload` lines; it exits after `count` messages
        (it loses buffered lines when killed, so tests let it finish). Returns once it is
        subscribed: its first subscription is a probe topic holding one retained message,
        which the broker sends as it subscribes; that line is read here, so `communicate()`
        gives the `count` messages."""
        probe = f"socialstream-test/probe/{uuid.uuid4().hex}"
        subprocess.run(["mosquitto_pub", "-p", str(self.port), "-t", probe, "-m", "here",
                        "-r", "-q", "1"], check=True, capture_output=True, timeout=30)
        args = ["mosquitto_sub", "-p", str(self.port), "-v", "-C", str(count + 1),
                "-W", str(int(timeout)), "-t", probe, *extra]
        for topic in topics:
            args += ["-t", topic]
        sub = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert sub.stdout is not None
        first = sub.stdout.readline()
        assert first == f"{probe} here\n", f"mosquitto_sub never subscribed: {first!r}"
        return sub

    def retained(self, topic: str) -> str:
        result = subprocess.run(["mosquitto_sub", "-p", str(self.port), "-t", topic, "-C", "1",
                                 "-W", "3"], capture_output=True, text=True, check=False)
        return result.stdout.strip()
