"""JSON lines to stdout or a file, one event per line, written through at once.

Each event is one write of a whole line, so whatever was emitted before a crash
or Ctrl-C is on disk. A write that fails part-way (a full disk, a file size
limit) is cut back to the last whole line before the error is raised, so the
file never ends in half an event; the error names the file and the reason.

With `--json --out FILE` one sink writes each line to the file and then to
stdout, so the two hold the same lines in the same order by construction, not
by two sinks happening to merge turns and unordered predictions alike.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from stream.errors import UserError
from stream.events import dumps, prediction_event, turn_event
from stream.frames import Item, Prediction, Turn
from stream.runtime import Stage


class JsonlSink(Stage):
    name = "jsonl"
    inputs = (Turn, Prediction)

    def __init__(self, session: str, path: Path | None = None,
                 names: dict[str, str] | None = None, run: str = "0",
                 echo: bool = False) -> None:
        self.session, self.run = session, run
        self.names = names or {}
        self.path = path
        self.echo = echo or path is None
        """Also print each line on stdout (always, without a file)."""
        self.written = 0
        self._fd: int | None = None
        self._size = 0
        """Bytes of whole lines in the file."""

    async def start(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            raise UserError(f"{self.path}: cannot write events ({exc.strerror}); "
                            "choose another --out") from exc

    async def process(self, item: Item) -> Sequence[Item]:
        if isinstance(item, Turn):
            self.write(turn_event(item, self.session, self.names, self.run))
        elif isinstance(item, Prediction):
            self.write(prediction_event(item, self.session, self.run))
        return ()

    def write(self, event: dict) -> None:
        line = dumps(event) + "\n"
        if self.path is not None:
            try:
                self._write_whole(line.encode("utf-8"))
            except OSError as exc:
                raise self._failed(self.path, exc) from exc
        if self.echo:
            try:
                sys.stdout.write(line)
                sys.stdout.flush()
            except OSError as exc:
                raise self._failed("stdout", exc) from exc
        self.written += 1

    def _write_whole(self, data: bytes) -> None:
        assert self._fd is not None, "start() opens the output"
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, data[done:])
        except OSError:
            with contextlib.suppress(OSError):  # a device (/dev/full) cannot be cut back
                os.ftruncate(self._fd, self._size)
            raise
        self._size += len(data)

    async def stop(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError as exc:
                raise self._failed(self.path, exc) from exc

    def _failed(self, where: Path | str, exc: OSError) -> UserError:
        if exc.errno == errno.EPIPE:  # `| head -1`: nothing to free
            return UserError(f"{where}: its reader closed it after {self.written} events")
        return UserError(f"{where}: writing events failed after {self.written} "
                         f"({exc.strerror or exc}); free space or choose another --out")
