"""Both data layouts, and bad lines reported with where and why, never fatal."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from stream.tasks.items import ItemError, read_items
from tests.tasks.helpers import item, write_jsonl


def test_eval_item_lines_and_every_kind_of_bad_line(tmp_path: Path) -> None:
    good = item(history=[("Player1", "Hi [Player0].")])
    unknown_task = {**item(), "task": "XYZ"}
    not_a_candidate = {**item(), "answer": "Player0"}  # the speaker
    missing = {k: v for k, v in item().items() if k != "candidates"}
    wrong_offset = item(task="PCR", text="I saw him.", target={"word": "him", "start": 2})
    path = write_jsonl(tmp_path / "d.jsonl", [good, "{not json", unknown_task, not_a_candidate,
                                              missing, wrong_offset, ""])
    loaded = read_items([path])
    assert [i.id for i in loaded.items] == [good["id"]]
    assert loaded.items[0].history[0].speaker == "Player1"
    assert loaded.items[0].group == "friends/s01_e01"
    reasons = {p.where: p.reason for p in loaded.problems}
    assert set(reasons) == {f"{path}:{n}" for n in (2, 3, 4, 5, 6)}
    assert reasons[f"{path}:2"].startswith("not JSON")
    assert "unknown task 'XYZ'" in reasons[f"{path}:3"]
    assert "not among the candidates" in reasons[f"{path}:4"]
    assert "missing field 'candidates'" in reasons[f"{path}:5"]
    assert "not at offset 2" in reasons[f"{path}:6"]


def test_lines_that_crashed_the_reader_are_problems_too(tmp_path: Path) -> None:
    """A deeply nested line and `start: Infinity` were tracebacks (rc 1) in eval and
    train-predictor; bytes that are not UTF-8 were replaced without a word."""
    infinite = item(task="PCR", text="I saw him.", target={"word": "him", "start": 6})
    text = json.dumps(infinite).replace('"start": 6', '"start": Infinity')
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join([json.dumps(item()).encode(), b"[" * 100_000, text.encode(),
                                  json.dumps(item(n=1)).encode().replace(b"Did", b"D\xffd")]))
    loaded = read_items([path])
    assert len(loaded.items) == 1
    reasons = {p.where: p.reason for p in loaded.problems}
    assert reasons == {f"{path}:2": "not JSON (nested too deep)",
                       f"{path}:3": "bad field: cannot convert float infinity to integer",
                       f"{path}:4": "not UTF-8 (byte 198)"}


def _mmsi(folder: Path, rows: list[dict[str, str]]) -> Path:
    folder.mkdir()
    with (folder / "metadata.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file_name", "user", "assistant"])
        writer.writeheader()
        writer.writerows(rows)
    return folder


def test_an_online_mmsi_folder(tmp_path: Path) -> None:
    prompt = ("Player0 wears red, Player1 blue, Player2 green.\n"
              "[Player1]: I was the seer.\n"
              "[Player2]: I think [Player1] is lying.\n"
              "[Player0]: So [MASK] says seer?")
    folder = _mmsi(tmp_path / "mmsi", [
        {"file_name": "game1/clip1.mp4", "user": prompt, "assistant": "Player1"},
        {"file_name": "game1/clip2.mp4", "user": "[Player0]: nothing masked",
         "assistant": "Player1"},
        {"file_name": "game1/clip3.mp4", "user": prompt, "assistant": "the seer"},
    ])
    (folder / "game1").mkdir()
    (folder / "game1" / "clip1.mp4").write_bytes(b"")
    loaded = read_items([folder])
    [only] = loaded.items
    assert only.task == "MPP" and only.speaker == "Player0" and only.answer == "Player1"
    assert only.players == ("Player0", "Player1", "Player2")
    assert only.candidates == ("Player1", "Player2")
    assert [u.speaker for u in only.history] == ["Player1", "Player2"]
    assert only.media == folder / "game1" / "clip1.mp4"
    # The first prompt spans 4 lines: the rows start on lines 2, 6 and 7.
    assert [p.where for p in loaded.problems] == [f"{folder}/metadata.csv:6",
                                                  f"{folder}/metadata.csv:7"]
    assert "[MASK]" in loaded.problems[0].reason
    assert "does not start with PlayerN" in loaded.problems[1].reason
    assert loaded.notes == []  # the one usable row has its clip


def test_missing_clips_are_said_once(tmp_path: Path) -> None:
    row = {"file_name": "g/c.mp4", "user": "[Player0]: hi [MASK]", "assistant": "Player1."}
    loaded = read_items([_mmsi(tmp_path / "m", [row, row])])
    assert len(loaded.items) == 2
    assert loaded.notes == [f"{tmp_path / 'm'}: 2 of 2 rows have no clip on disk: scored as "
                            "text-only items"]


def test_a_path_that_is_neither(tmp_path: Path) -> None:
    with pytest.raises(ItemError, match="no such file"):
        read_items([tmp_path / "nope.jsonl"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ItemError, match=r"without metadata\.csv"):
        read_items([tmp_path / "empty"])
