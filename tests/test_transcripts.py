"""Transcript sidecars: SRT, WebVTT, JSONL; malformed lines skipped with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.errors import TranscriptError
from stream.transcript.readers import find_sidecar, read_transcript


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_demo_srt_matches_the_truth(demo: Path, truth: dict) -> None:
    transcript = read_transcript(demo.with_suffix(".srt"))
    assert not transcript.problems
    assert [line.text for line in transcript.lines] == [t["text"] for t in truth["turns"]]
    for line, turn in zip(transcript.lines, truth["turns"], strict=True):
        assert abs(line.start - turn["start"]) <= 0.001 and abs(line.end - turn["end"]) <= 0.001
        assert line.pts == line.end


def test_srt_with_malformed_cues_reports_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "talk.srt", (
        "1\n00:00:01,000 --> 00:00:02,500\nHello there.\n\n"
        "2\n00:00:03,000 -> 00:00:04,000\nbad arrow\n\n"
        "3\n00:00:05,000 --> 00:00:04,000\nends before it starts\n\n"
        "4\n00:00:06,000 --> 00:00:07,000\n\n"
        "5\n00:00:08,000 --> 00:00:09,250\nTwo\nlines.\n"))
    transcript = read_transcript(path)
    assert [(ln.start, ln.end, ln.text) for ln in transcript.lines] == [
        (1.0, 2.5, "Hello there."), (8.0, 9.25, "Two lines.")]
    origins = [p.origin for p in transcript.problems]
    assert origins == [f"{path}:6", f"{path}:10", f"{path}:14"]
    assert "end 4.000s is before start 5.000s" in str(transcript.problems[1])


def test_webvtt_voices_settings_and_notes(tmp_path: Path) -> None:
    path = _write(tmp_path, "talk.vtt", (
        "WEBVTT\n\nNOTE a comment\n\n"
        "intro\n00:01.000 --> 00:02.000 align:start\n<v Alice>Hi <b>Ben</b>!</v>\n\n"
        "01:00:03.5 --> 01:00:04.000\nplain\n"))
    transcript = read_transcript(path)
    assert not transcript.problems
    first, second = transcript.lines
    assert (first.start, first.end, first.text, first.speaker) == (1.0, 2.0, "Hi Ben!", "Alice")
    assert (second.start, second.text, second.speaker) == (3603.5, "plain", None)


def test_webvtt_without_header_is_reported_but_read(tmp_path: Path) -> None:
    path = _write(tmp_path, "x.vtt", "00:01.000 --> 00:02.000\nhello\n")
    transcript = read_transcript(path)
    assert len(transcript.lines) == 1
    assert "missing WEBVTT header" in str(transcript.problems[0])


def test_jsonl_skips_bad_lines_with_reasons(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.jsonl", "\n".join([
        '{"start": 0.5, "end": 1.0, "text": "ok", "speaker": "Ben"}',
        "{not json",
        '["a list"]',
        '{"start": "1", "end": 2, "text": "x"}',
        '{"start": 1, "end": 2}',
        '{"start": 1, "end": 2, "text": "y", "speaker": 5}',
        "",
        '{"start": 3, "end": 4, "text": "fine"}',
    ]))
    transcript = read_transcript(path)
    assert [(ln.text, ln.speaker) for ln in transcript.lines] == [("ok", "Ben"), ("fine", None)]
    assert [p.origin.rsplit(":", 1)[1] for p in transcript.problems] == ["2", "3", "4", "5", "6"]
    assert "not JSON" in transcript.problems[0].message


def test_lines_are_released_in_order_of_their_end(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.jsonl", '{"start": 0, "end": 5, "text": "long"}\n'
                                        '{"start": 1, "end": 2, "text": "short"}\n')
    assert [ln.text for ln in read_transcript(path).lines] == ["short", "long"]


def test_unusable_transcript_files_raise(tmp_path: Path) -> None:
    with pytest.raises(TranscriptError, match=r"unknown transcript format \.txt"):
        read_transcript(_write(tmp_path, "t.txt", "hi"))
    with pytest.raises(TranscriptError, match="cannot read transcript"):
        read_transcript(tmp_path / "missing.srt")


def test_invalid_utf8_is_noted_on_its_line_and_the_cue_is_used(tmp_path: Path) -> None:
    path = tmp_path / "t.srt"
    path.write_bytes(b"1\n00:00:01,000 --> 00:00:02,000\nhello\n\n"
                     b"2\n00:00:03,000 --> 00:00:04,000\ncaf\xe9\n")
    transcript = read_transcript(path)
    assert [line.text for line in transcript.lines] == ["hello", "caf\ufffd"]
    assert transcript.problems == []  # nothing was skipped
    assert [str(n).split(": ")[0] for n in transcript.notes] == [f"{path}:7"]
    assert "byte 0xe9" in transcript.notes[0].message


def test_webvtt_entities_and_a_voice_after_a_timestamp_tag(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.vtt", "WEBVTT\n\n00:01.000 --> 00:02.000\n"
                  "<00:01.200><v Ann &amp; Bo>Fish &amp; chips &lt;3</v>\n")
    line = read_transcript(path).lines[0]
    assert (line.text, line.speaker) == ("Fish & chips <3", "Ann & Bo")


def test_sidecar_is_found_beside_the_media(tmp_path: Path) -> None:
    media = tmp_path / "talk.mp4"
    assert find_sidecar(str(media)) is None
    _write(tmp_path, "talk.vtt", "WEBVTT\n")
    assert find_sidecar(str(media)) == tmp_path / "talk.vtt"
    _write(tmp_path, "talk.jsonl", "")
    assert find_sidecar(str(media)) == tmp_path / "talk.jsonl"
    assert find_sidecar("rtsp://host/stream") is None and find_sidecar("-") is None
