"""`socialstream eval` and `train-predictor` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_eval_a_scene_with_ground_truth(demo: Path) -> None:
    done = run_cli("eval", str(demo), "--json", timeout=300)
    assert done.returncode == 0, done.stderr
    scene = json.loads(done.stdout.splitlines()[-1])["scenes"][str(demo)]
    assert {t: v["n"] for t, v in scene["tasks"].items()} == {
        "addressee": 12, "pronoun": 5, "mentioned": 12}
    # Above the previous-speaker rule on the demo (6/12), without any model.
    assert scene["tasks"]["addressee"]["accuracy"] > \
        scene["tasks"]["addressee"]["baselines"]["previous_speaker"]
