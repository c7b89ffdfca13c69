"""A transcript read ahead of time, released line by line in media-time order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

from stream.frames import Item
from stream.runtime import Source
from stream.transcript.readers import Transcript


class TranscriptSource(Source):
    """Each line is known from its end time on, as it would be from a live recognizer."""

    name = "transcript"

    def __init__(self, transcript: Transcript) -> None:
        self.transcript = transcript
        self.uri = transcript.path

    async def items(self) -> AsyncIterator[Item]:
        for seq, line in enumerate(self.transcript.lines):
            yield replace(line, seq=seq, source=self.name)
