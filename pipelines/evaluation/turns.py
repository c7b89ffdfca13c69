"""`socialstream eval MEDIA... --rttm REF.rttm`: replay recordings and score their turns
against who-spoke-when.

The metrics are pyannote.metrics', so figures compare with published ones: voice
activity miss and false alarm (detection error components), turn purity and coverage
(segmentation purity/coverage: is each turn one reference speaker-turn, is each
speaker-turn inside one turn; reference gaps under 0.5 s are bridged, pyannote's
default), and the diarization error rate of the turns' speakers. A turn without a
speaker (no face voted, no voice cluster) counts as its own speaker.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pyannote.core import Annotation, Segment, Timeline
from pyannote.metrics.detection import DetectionErrorRate
from pyannote.metrics.diarization import DiarizationErrorRate
from pyannote.metrics.segmentation import SegmentationCoverage, SegmentationPurity
from rich.console import Console
from rich.table import Table

from pipelines.config import load_config
from pipelines.run.replay import Collect, build_replay, run_replay
from stream.errors import UserError
from stream.frames import Turn


def _fields(path: Path, count: int, what: str) -> list[tuple[int, list[str]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read {what} ({e.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text {what} file") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith((";", "#")):
            continue
        if len(parts) < count:
            raise UserError(f"{path}:{number}: {len(parts)} fields, an {what} line has "
                            f"{count}")
        rows.append((number, parts))
    return rows


def _seconds(path: Path, number: int, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise UserError(f"{path}:{number}: {value!r} is not a time in seconds") from None
    if not np.isfinite(seconds) or seconds < 0:
        raise UserError(f"{path}:{number}: {value!r} is not a time in seconds")
    return seconds


def read_rttm(path: Path) -> dict[str, Annotation]:
    """`SPEAKER uri channel onset duration <NA> <NA> speaker <NA> <NA>` lines by uri."""
    found: dict[str, Annotation] = {}
    for number, parts in _fields(path, 8, "RTTM"):
        if parts[0] != "SPEAKER":
            continue
        onset, duration = (_seconds(path, number, v) for v in parts[3:5])
        annotation = found.setdefault(parts[1], Annotation(uri=parts[1]))
        annotation[Segment(onset, onset + duration), number] = parts[7]
    if not found:
        raise UserError(f"{path}: no SPEAKER lines (is it an RTTM file?)")
    return found


def read_uem(path: Path) -> dict[str, Timeline]:
    """`uri channel start end` lines: the scored regions by uri."""
    found: dict[str, Timeline] = {}
    for number, parts in _fields(path, 4, "UEM"):
        start, end = (_seconds(path, number, v) for v in parts[2:4])
        if end <= start:
            raise UserError(f"{path}:{number}: the region {start:g}-{end:g} s is empty or "
                            "reversed (a UEM line is: uri channel start end)")
        found.setdefault(parts[0], Timeline(uri=parts[0])).add(Segment(start, end))
    if not found:
        raise UserError(f"{path}: no regions (is it a UEM file?)")
    return found


def hypothesis(turns: list[Turn], uri: str) -> tuple[Annotation, Timeline]:
    """The turns as who-spoke-when, and the voice activity they came from."""
    spoken = Annotation(uri=uri)
    voiced = Timeline(uri=uri)
    for turn in turns:
        speaker = turn.vote.speaker if turn.vote is not None else None
        spoken[Segment(turn.start, turn.end), turn.index] = speaker or f"turn{turn.index}"
        for segment in turn.segments:
            voiced.add(Segment(segment.start, segment.end))
    return spoken, voiced


@dataclass
class _Totals:
    purity: SegmentationPurity = field(default_factory=SegmentationPurity)
    coverage: SegmentationCoverage = field(default_factory=SegmentationCoverage)
    der: DiarizationErrorRate = field(default_factory=DiarizationErrorRate)
    detection: DetectionErrorRate = field(default_factory=DetectionErrorRate)
    latencies: list[float] = field(default_factory=list)

    def add(self, reference: Annotation, spoken: Annotation, voiced: Timeline,
            uem: Timeline) -> dict[str, float]:
        detail = self.detection(reference, voiced.support().to_annotation(), uem=uem, detailed=True)
        total = max(detail["total"], 1e-9)
        # pyannote's segmentation metrics take a uem and ignore it: both sides are cut to
        # the scored regions first.
        inside = (reference.crop(uem, mode="intersection"),
                  spoken.crop(uem, mode="intersection"))
        return {"purity": self.purity(*inside),
                "coverage": self.coverage(*inside),
                "der": self.der(reference, spoken, uem=uem),
                "vad_miss": detail["miss"] / total,
                "vad_false_alarm": detail["false alarm"] / total}

    def summary(self) -> dict[str, float]:
        detail = self.detection[:]
        total = max(detail["total"], 1e-9)
        return {"purity": abs(self.purity), "coverage": abs(self.coverage),
                "der": abs(self.der), "vad_miss": detail["miss"] / total,
                "vad_false_alarm": detail["false alarm"] / total,
                "latency_s": float(np.median(self.latencies)) if self.latencies else 0.0}


def evaluate_turns(media: list[Path], rttm: Path, uem_path: Path | None,
                   out: Console, overrides: dict[str, Any] | None = None,
                   config: Path | None = None) -> dict[str, Any]:
    references = read_rttm(rttm)
    regions = read_uem(uem_path) if uem_path is not None else {}
    missing = [m for m in media if m.stem not in references]
    if missing:
        raise UserError(f"{missing[0]}: no speaker in {rttm} has its name "
                        f"({missing[0].stem!r}, the RTTM's second field)")
    unscored = [m for m in media if uem_path is not None and m.stem not in regions]
    if unscored:
        raise UserError(f"{unscored[0]}: {uem_path} has no region for it ("
                        f"{unscored[0].stem!r}, the UEM's first field)")
    settings = load_config(config, {"output": {"progress": False},
                                    "predictions": {"predictor": "none"}, **(overrides or {})})
    totals = _Totals()
    table = Table(title=f"turns against {rttm.name}", title_justify="left")
    for column in ("file", "turns", "purity", "coverage", "DER", "VAD miss", "VAD FA",
                   "latency"):
        table.add_column(column, justify="left" if column == "file" else "right",
                         no_wrap=column == "file")
    files: dict[str, Any] = {}
    for path in media:
        sink = Collect((Turn,))
        replay = build_replay(str(path), settings, [sink])
        report = asyncio.run(run_replay(replay))
        turns = [t for t in sink.items if isinstance(t, Turn)]
        uri = path.stem
        length = report.media_s or replay.info.duration or max((t.end for t in turns),
                                                                default=0.0)
        whole = Timeline([Segment(0, length)], uri=uri)
        uem = regions[uri].crop(whole) if uri in regions else whole
        if not uem:
            raise UserError(f"{uem_path}: the regions of {uri!r} lie outside its "
                            f"{length:.1f} s; nothing would be scored")
        spoken, voiced = hypothesis(turns, uri)
        scores = totals.add(references[uri], spoken, voiced, uem)
        delays = [t.known_at - t.end for t in turns if t.known_at is not None]
        totals.latencies.extend(delays)
        scores["latency_s"] = float(np.median(delays)) if delays else 0.0
        files[str(path)] = {"turns": len(turns), **{k: round(v, 4) for k, v in scores.items()}}
        table.add_row(path.name, str(len(turns)), *(f"{scores[k]:.1%}" for k in (
            "purity", "coverage", "der", "vad_miss", "vad_false_alarm")),
            f"{scores['latency_s']:.2f} s")
    summary = totals.summary()
    table.add_row("all", str(sum(f["turns"] for f in files.values())), *(
        f"{summary[k]:.1%}" for k in ("purity", "coverage", "der", "vad_miss",
                                      "vad_false_alarm")), f"{summary['latency_s']:.2f} s")
    out.print(table)
    return {"files": len(media), **{k: round(v, 4) for k, v in summary.items()},
            "per_file": files}
