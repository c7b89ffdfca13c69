"""Transcript sidecars: SRT, WebVTT and JSONL.

A malformed cue or line is reported with `file:line` and skipped; it never
stops the run. Only a file that cannot be read at all raises.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from stream.errors import TranscriptError
from stream.frames import TranscriptLine

log = logging.getLogger(__name__)

SUFFIXES = (".jsonl", ".vtt", ".srt")
"""Sidecar endings, in the order they are looked for beside a media file."""
_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{1,3})"
_TIMING = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}(?:\s+.*)?$")
_VOICE = re.compile(r"<v(?:\.[\w.-]+)?\s+([^>]+)>")
_TAG = re.compile(r"<[^>]*>")


@dataclass(frozen=True)
class Problem:
    origin: str
    message: str

    def __str__(self) -> str:
        return f"{self.origin}: {self.message}"


@dataclass
class Transcript:
    path: str
    lines: list[TranscriptLine] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    """Cues or lines that were skipped."""
    notes: list[Problem] = field(default_factory=list)
    """Things worth saying about cues that were still used (bytes that were not UTF-8)."""

    def note(self, line_no: int, message: str) -> None:
        problem = Problem(f"{self.path}:{line_no}", message)
        self.notes.append(problem)
        log.warning("%s", problem)

    def skip(self, line_no: int, message: str) -> None:
        problem = Problem(f"{self.path}:{line_no}", message)
        self.problems.append(problem)
        log.warning("skipping %s", problem)

    def add(self, line_no: int, start: float, end: float, text: str,
            speaker: str | None = None) -> None:
        if not (start >= 0 and end >= start):
            self.skip(line_no, f"end {end:.3f}s is before start {start:.3f}s"
                      if start >= 0 else f"negative start {start:.3f}s")
            return
        if not text.strip():
            self.skip(line_no, "cue has no text")
            return
        self.lines.append(TranscriptLine(pts=end, start=start, end=end, text=text.strip(),
                                         speaker=speaker, origin=f"{self.path}:{line_no}"))


def is_seconds(value: object) -> bool:
    """A time as JSON gives it: an int or float that is finite (`true`, NaN and Infinity,
    which Python's json accepts, are not times)."""
    return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]


def find_sidecar(media: str) -> Path | None:
    """`demo.jsonl`, `.vtt` or `.srt` beside `demo.mp4`, if there is one; never our own
    event output (`--out demo.jsonl` beside the media), which is skipped with a warning."""
    if media == "-" or "://" in media:
        return None
    base = Path(media)
    for suffix in SUFFIXES:
        path = base.with_suffix(suffix)
        if not path.is_file():
            continue
        schema = event_schema(path)
        if schema is None:
            return path
        log.warning("%s is socialstream's own event output (%s), not a transcript: not used "
                    "as one", path, schema)
    return None


def event_schema(path: Path, first: bytes | None = None) -> str | None:
    """The `schema` of the first line when the file holds socialstream events, else None;
    `first` is that line when the caller has already read it."""
    if path.suffix.lower() != ".jsonl":
        return None
    try:
        if first is None:
            with path.open("rb") as file:
                first = file.readline(1 << 16)
        record = json.loads(first)
    except (OSError, ValueError, RecursionError):
        return None
    schema = record.get("schema") if isinstance(record, dict) else None
    return schema if isinstance(schema, str) and schema.startswith("socialstream.") else None


def read_transcript(path: str | Path) -> Transcript:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise TranscriptError(f"{path}: unknown transcript format {suffix or '(none)'}; "
                              f"use one of {', '.join(SUFFIXES)}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TranscriptError(f"{path}: cannot read transcript ({exc.strerror}); "
                              "check the path") from exc
    if (schema := event_schema(path, raw.split(b"\n", 1)[0])) is not None:
        raise TranscriptError(f"{path}: this is socialstream's own event output ({schema}), "
                              "not a transcript; give the SRT, WebVTT or JSONL transcript")
    transcript = Transcript(str(path))
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        transcript.note(line, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x}); undecodable "
                              "bytes were replaced and the cue is used (save it as UTF-8)")
        text = raw.decode("utf-8-sig", errors="replace")
    {".jsonl": _parse_jsonl, ".vtt": _parse_vtt, ".srt": _parse_srt}[suffix](text, transcript)
    transcript.lines.sort(key=lambda line: (line.end, line.start))
    return transcript


def _seconds(h: str | None, m: str, s: str, frac: str) -> float:
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + int(frac.ljust(3, "0")) / 1000


def _blocks(text: str) -> Iterator[list[tuple[int, str]]]:
    """Groups of non-blank (line number, line) pairs separated by blank lines."""
    block: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            block.append((number, line.rstrip()))
        elif block:
            yield block
            block = []
    if block:
        yield block


def _cue(block: list[tuple[int, str]], transcript: Transcript,
         speaker_tags: bool) -> None:
    timing_at = next((i for i, (_, line) in enumerate(block) if "-->" in line), None)
    if timing_at is None or timing_at > 1:
        # Blame the line where the timing should be: after a cue number or identifier.
        at = 1 if len(block) > 1 and "-->" not in block[0][1] and timing_at != 0 else 0
        transcript.skip(block[at][0], f"no cue timing 'START --> END' (got {block[at][1][:40]!r})")
        return
    number, timing = block[timing_at]
    match = _TIMING.match(timing)
    if match is None:
        transcript.skip(number, f"bad cue timing {timing[:60]!r}")
        return
    g = match.groups()
    start, end = _seconds(*g[:4]), _seconds(*g[4:])
    words = " ".join(line.strip() for _, line in block[timing_at + 1:])
    speaker = None
    if speaker_tags and (voice := _VOICE.search(words)):  # may follow a timestamp tag
        speaker = html.unescape(voice.group(1).strip())
    text = _TAG.sub("", words)
    transcript.add(number, start, end, html.unescape(text) if speaker_tags else text, speaker)


def _parse_srt(text: str, transcript: Transcript) -> None:
    for block in _blocks(text):
        _cue(block, transcript, speaker_tags=False)


def _parse_vtt(text: str, transcript: Transcript) -> None:
    blocks = list(_blocks(text))
    if not blocks or not blocks[0][0][1].startswith("WEBVTT"):
        transcript.skip(1, "missing WEBVTT header; reading cues anyway")
    for block in blocks:
        first = block[0][1]
        if first.startswith(("WEBVTT", "NOTE", "STYLE", "REGION")):
            continue
        _cue(block, transcript, speaker_tags=True)


def _parse_jsonl(text: str, transcript: Transcript) -> None:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            transcript.skip(number, f"not JSON ({exc.msg})")
            continue
        if not isinstance(record, dict):
            transcript.skip(number, "not a JSON object")
            continue
        start, end, words = record.get("start"), record.get("end"), record.get("text")
        speaker = record.get("speaker")
        if not all(is_seconds(v) for v in (start, end)):
            transcript.skip(number, "needs finite numbers 'start' and 'end' (seconds)")
        elif not isinstance(words, str):
            transcript.skip(number, "needs a string 'text'")
        elif speaker is not None and not isinstance(speaker, str):
            transcript.skip(number, "'speaker' must be a string when given")
        else:
            transcript.add(number, float(start), float(end), words, speaker)
