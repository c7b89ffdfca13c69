"""`socialstream eval MEDIA --rttm`: turns scored against who-spoke-when."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyannote.core import Annotation, Segment, Timeline

from pipelines.evaluation.turns import _Totals, hypothesis, read_rttm, read_uem
from stream.errors import UserError
from stream.frames import SpeakerVote, SpeechSegment, Turn
from tests.conftest import ROOT, run_cli


def _turn(index: int, start: float, end: float, speaker: str | None = None) -> Turn:
    vote = SpeakerVote(speaker=speaker, confidence=1.0, scores={}, cues={}) if speaker else None
    return Turn(pts=end + 0.4, index=index, start=start, end=end, text="",
                segments=(SpeechSegment(pts=end + 0.4, start=start, end=end),), vote=vote,
                known_at=end + 0.4)


def _reference() -> Annotation:
    reference = Annotation(uri="x")
    reference[Segment(0, 2)] = "A"
    reference[Segment(2, 4)] = "B"
    return reference


def test_one_turn_over_two_speakers_is_half_pure_and_fully_covering() -> None:
    spoken, voiced = hypothesis([_turn(0, 0.0, 4.0)], "x")
    scores = _Totals().add(_reference(), spoken, voiced, Timeline([Segment(0, 4)]))
    # The turn is half A, half B; each speaker-turn lies inside it; with no speaker it
    # maps to one of them, the other's 2 s are confusion.
    assert scores == {"purity": 0.5, "coverage": 1.0, "der": 0.5, "vad_miss": 0.0,
                      "vad_false_alarm": 0.0}


def test_split_turns_with_speakers_score_perfectly_and_voice_activity_counts_time() -> None:
    turns = [_turn(0, 0.0, 2.0, "P1"), _turn(1, 2.0, 3.0, "P2")]
    spoken, voiced = hypothesis(turns, "x")
    scores = _Totals().add(_reference(), spoken, voiced, Timeline([Segment(0, 4)]))
    assert scores["purity"] == scores["coverage"] == 1.0
    # B's last second was not heard: a quarter of the speech missed, all of it the DER.
    assert scores["vad_miss"] == scores["der"] == 0.25
    assert scores["vad_false_alarm"] == 0.0


def test_a_partial_uem_scores_purity_and_coverage_inside_it_only() -> None:
    """A 0-10 s, B 10-20 s, one turn 0-20 s, UEM 0-10 s: inside the UEM the turn is all
    A (pyannote's segmentation metrics drop the uem they are given: purity read 0.5)."""
    reference = Annotation(uri="x")
    reference[Segment(0, 10)] = "A"
    reference[Segment(10, 20)] = "B"
    spoken, voiced = hypothesis([_turn(0, 0.0, 20.0, "P1")], "x")
    scores = _Totals().add(reference, spoken, voiced, Timeline([Segment(0, 10)]))
    assert scores["purity"] == scores["coverage"] == 1.0 and scores["der"] == 0.0


@pytest.mark.parametrize(("line", "why"), [
    ("a NA 5 2", "ref.uem:1: the region 5-2 s is empty or reversed"),
    ("a NA 3 3", "ref.uem:1: the region 3-3 s is empty or reversed"),
    (";; nothing", "ref.uem: no regions")])
def test_an_empty_or_reversed_uem_is_refused(tmp_path: Path, line: str, why: str) -> None:
    uem = tmp_path / "ref.uem"
    uem.write_text(line + "\n")
    with pytest.raises(UserError, match=why):
        read_uem(uem)


def test_rttm_and_uem_are_read_and_bad_lines_named(tmp_path: Path) -> None:
    rttm = tmp_path / "ref.rttm"
    rttm.write_text(";; comment\nSPEAKER a 1 0.5 1.0 <NA> <NA> ann <NA> <NA>\n"
                    "SPEAKER a 1 2.0 0.5 <NA> <NA> bob <NA> <NA>\n"
                    "SPEAKER b 1 0 3 <NA> <NA> cy <NA> <NA>\n")
    found = read_rttm(rttm)
    assert sorted(found) == ["a", "b"]
    assert sorted(found["a"].itertracks(yield_label=True)) == [
        (Segment(0.5, 1.5), 2, "ann"), (Segment(2.0, 2.5), 3, "bob")]
    uem = tmp_path / "ref.uem"
    uem.write_text("a NA 0.000 30.000\n")
    assert read_uem(uem)["a"] == Timeline([Segment(0, 30)])
    rttm.write_text("SPEAKER a 1 0.5 1.0 <NA> <NA> ann <NA> <NA>\nSPEAKER a 1 two 1\n")
    with pytest.raises(UserError, match=r"ref.rttm:2: 5 fields"):
        read_rttm(rttm)
    rttm.write_text("SPEAKER a 1 -1 1.0 <NA> <NA> ann <NA> <NA>\n")
    with pytest.raises(UserError, match=r"ref.rttm:1: '-1' is not a time"):
        read_rttm(rttm)


def _duo_rttm(path: Path) -> Path:
    truth = json.loads((ROOT / "examples" / "duo.truth.json").read_text())
    path.write_text("".join(
        f"SPEAKER duo 1 {t['start']:.4f} {t['end'] - t['start']:.4f} <NA> <NA> {t['speaker']}"
        " <NA> <NA>\n" for t in truth["turns"]))
    return path


def test_eval_rttm_replays_a_scene_and_ends_stdout_with_the_totals(tmp_path: Path) -> None:
    rttm = _duo_rttm(tmp_path / "duo.rttm")
    result = run_cli("eval", str(ROOT / "examples" / "duo.mp4"), "--rttm", str(rttm), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"files", "purity", "coverage", "der", "vad_miss", "vad_false_alarm",
            "latency_s"} <= report.keys()
    assert report["files"] == 1
    # Five turns with pauses between them: each found whole and alone ...
    assert report["purity"] == 1.0 and report["coverage"] > 0.99
    # ... and every turn's voted speaker right: the DER is voice activity's error alone
    # (three figures each rounded to 4 places: they may differ by 1.5e-4).
    assert report["der"] == pytest.approx(report["vad_miss"] + report["vad_false_alarm"],
                                          abs=1.5e-4)
    assert report["der"] < 0.1
    # A turn is known one VAD hangover (0.4 s) after its speech ends.
    assert report["latency_s"] == pytest.approx(0.4, abs=0.021)


def test_eval_rttm_refuses_what_it_cannot_score(tmp_path: Path) -> None:
    rttm = _duo_rttm(tmp_path / "duo.rttm")
    demo = str(ROOT / "examples" / "demo.mp4")
    result = run_cli("eval", demo, "--rttm", str(rttm))
    assert result.returncode != 0
    assert "demo.mp4: no speaker in" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("eval", demo, "--uem", str(rttm))
    assert result.returncode != 0 and "--uem applies to an --rttm evaluation" in result.stderr
    items = tmp_path / "items.jsonl"
    items.write_text("{}\n")
    result = run_cli("eval", str(items), "--rttm", str(rttm))
    assert result.returncode != 0 and "items.jsonl: --rttm scores recordings" in result.stderr
    result = run_cli("eval", demo, "--config", str(rttm))
    assert result.returncode != 0 and "--config applies to an --rttm evaluation" in result.stderr
    # A UEM of another file, or outside this one, scored the whole file or reported 0 %.
    duo = str(ROOT / "examples" / "duo.mp4")
    other = tmp_path / "other.uem"
    other.write_text("demo NA 0 10\n")
    result = run_cli("eval", duo, "--rttm", str(rttm), "--uem", str(other))
    assert result.returncode == 2 and "other.uem has no region for it ('duo'" in result.stderr
    outside = tmp_path / "outside.uem"
    outside.write_text("duo NA 500 600\n")
    result = run_cli("eval", duo, "--rttm", str(rttm), "--uem", str(outside))
    assert result.returncode == 2 and "lie outside its" in result.stderr


def test_eval_rttm_replays_with_the_given_config(tmp_path: Path) -> None:
    rttm = _duo_rttm(tmp_path / "duo.rttm")
    config = tmp_path / "quick.yaml"
    config.write_text("vad:\n  hangover_s: 0.3\n")
    result = run_cli("eval", str(ROOT / "examples" / "duo.mp4"), "--rttm", str(rttm),
                     "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    # Turns now close after 0.3 s of silence instead of the default 0.4 s.
    assert json.loads(result.stdout.strip().splitlines()[-1])["latency_s"] == pytest.approx(
        0.3, abs=0.021)
