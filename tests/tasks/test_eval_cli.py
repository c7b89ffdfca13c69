"""`socialstream eval` and `train-predictor` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.evaluation.words import normalise
from tests.conftest import run_cli
from tests.tasks.helpers import write_jsonl
from tests.tasks.test_predictors import _dataset


def test_eval_prints_tables_and_ends_with_json(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [*_dataset(4), "{broken", {"schema": "x"}])
    done = run_cli("eval", str(data), "--cv", "2", "--json", "--out", str(tmp_path / "r.json"))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["predictor"].startswith("fusion (cross-validated, 2 folds")
    assert result["tasks"]["STI"]["n"] == sum(1 for r in _dataset(4) if r["task"] == "STI")
    assert result["problems"] == 2
    assert f"{data}:{len(_dataset(4)) + 1}: not JSON" in done.stderr
    assert "previous" in done.stderr  # the table went to stderr
    assert json.loads((tmp_path / "r.json").read_text()) == result


def test_train_predictor_then_eval_with_those_weights(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", _dataset(4))
    done = run_cli("train-predictor", str(data), "--out", str(tmp_path / "w.json"))
    assert done.returncode == 0, done.stderr
    done = run_cli("eval", str(data), "--weights", str(tmp_path / "w.json"), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["tasks"]["MPP"]["accuracy"] == 1.0


def test_eval_bad_input_is_one_line(tmp_path: Path) -> None:
    done = run_cli("eval", str(tmp_path / "missing.jsonl"))
    assert done.returncode == 2
    assert done.stderr.strip() == (f"socialstream: error: {tmp_path / 'missing.jsonl'}: no such "
                                   "file or folder")
    empty = write_jsonl(tmp_path / "e.jsonl", ["{broken"])
    done = run_cli("eval", str(empty))
    assert done.returncode == 2 and "no usable items (1 skipped)" in done.stderr
    bad = tmp_path / "w.json"
    bad.write_text("{}")
    done = run_cli("eval", str(write_jsonl(tmp_path / "d.jsonl", _dataset(2))),
                   "--weights", str(bad))
    assert done.returncode == 2 and "schema is None" in done.stderr


def test_eval_a_scene_with_ground_truth(demo: Path, truth: dict) -> None:
    done = run_cli("eval", str(demo), "--json", timeout=300)
    assert done.returncode == 0, done.stderr
    scene = json.loads(done.stdout.splitlines()[-1])["scenes"][str(demo)]
    assert {t: v["n"] for t, v in scene["tasks"].items()} == {
        "addressee": 12, "pronoun": 5, "mentioned": 12}
    # The figures of docs/evaluation.md (addressee 9/12, pronouns 4/5, mentioned 11/12),
    # above the previous-speaker rule on the demo (6/12), without any model.
    right = {t: round(v["accuracy"] * v["n"]) for t, v in scene["tasks"].items()}
    assert right == {"addressee": 9, "pronoun": 4, "mentioned": 11}
    assert scene["tasks"]["addressee"]["baselines"]["previous_speaker"] == 0.5
    # The words come from the transcript beside it, which is the truth's: no word error,
    # and one turn out per truth turn, each with its words.
    words = scene["words"]
    assert words["wer"]["rate"] == words["cpwer"]["rate"] == 0.0
    assert words["wer"]["reference_words"] == sum(
        len(normalise(t["text"]).split()) for t in truth["turns"]) == 84
    assert (words["turns_out"], words["turns_truth"]) == (12, 12)
    assert words["empty_speech_turns"] == words["overlapping_turns"] == 0
    assert words["words_from"] == {"transcript": 12}
    assert words["word_latency"]["n"] == 0  # nothing was recognised
    assert "cpWER" in done.stderr  # the words table


def test_eval_asr_is_refused_where_there_is_no_scene(tmp_path: Path, demo: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", _dataset(2))
    done = run_cli("eval", str(data), "--asr")
    assert done.returncode == 2 and "--asr recognises the words of scenes" in done.stderr
    done = run_cli("eval", str(demo), "--asr", "--rttm", str(data))
    assert done.returncode == 2 and "not to an --rttm evaluation" in done.stderr


def test_a_scene_replayed_for_asr_leaves_its_transcript_unread(demo: Path) -> None:
    from pipelines.config import load_config
    from pipelines.evaluation.scene import build_scene_replay

    config = load_config(None, {"output": {"progress": False}})
    assert build_scene_replay(str(demo), config, []).transcript is not None
    replay = build_scene_replay(str(demo), config, [], asr=True)
    assert replay.transcript is None and replay.session == "demo"
    assert {stage.name for stage in replay.pipeline.stages} >= {"asr", "vad", "turns"}
    feeds = {(e.src, e.dst) for e in replay.pipeline.edges}
    assert ("asr", "turns") in feeds and ("transcript", "turns") not in feeds
