"""JSON lines to stdout or a file, one event per line, flushed per event.

Flushing per event means whatever was emitted before a crash or Ctrl-C is on
disk; the file is closed when the stage stops, error or not.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from stream.errors import UserError
from stream.events import dumps, prediction_event, turn_event
from stream.frames import Item, Prediction, Turn
from stream.runtime import Stage


class JsonlSink(Stage):
    name = "jsonl"
    inputs = (Turn, Prediction)

    def __init__(self, session: str, path: Path | None = None,
                 names: dict[str, str] | None = None) -> None:
        self.session = session
        self.names = names or {}
        self.path = path
        self.written = 0
        self._out: TextIO | None = None

    async def start(self) -> None:
        if self.path is None:
            self._out = sys.stdout
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._out = self.path.open("w", encoding="utf-8")
        except OSError as exc:
            raise UserError(f"{self.path}: cannot write events ({exc.strerror}); "
                            "choose another --out") from exc

    async def process(self, item: Item) -> Sequence[Item]:
        if isinstance(item, Turn):
            self.write(turn_event(item, self.session, self.names))
        elif isinstance(item, Prediction):
            self.write(prediction_event(item, self.session))
        return ()

    def write(self, event: dict) -> None:
        assert self._out is not None, "start() opens the output"
        try:
            self._out.write(dumps(event) + "\n")
            self._out.flush()
        except OSError as exc:
            if self._out is not sys.stdout:  # what is buffered cannot be written either
                with contextlib.suppress(OSError):
                    self._out.close()
                self._out = None
            raise self._failed(exc) from exc
        self.written += 1

    async def stop(self) -> None:
        out, self._out = self._out, None
        if out is not None and out is not sys.stdout:
            try:
                out.close()
            except OSError as exc:
                raise self._failed(exc) from exc

    def _failed(self, exc: OSError) -> UserError:
        where = self.path if self.path is not None else "stdout"
        return UserError(f"{where}: writing events failed after {self.written} "
                         f"({exc.strerror or exc}); free space or choose another --out")
