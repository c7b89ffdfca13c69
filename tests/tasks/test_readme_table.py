"""The cross-validated table of docs/evaluation.md is what `socialstream eval ... --cv 5`
prints: the figures we publish about ourselves come from the command, not from a hand."""

from __future__ import annotations

import json
import re

from pipelines.evaluation.items import wilson
from tests.conftest import ROOT, require_shared, run_cli

SOCIAL = ROOT.parent / "shared" / "data" / "social"
SOURCES = {"Friends": "friends", "Werewolf": "wau"}
BASELINES = {"previous speaker": "previous_speaker",
             "mention-then-speaker": "mention_then_speaker"}
ROW = re.compile(r"^\| (Friends|Werewolf) (STI|PCR|MPP) \| (\d+) \| ([\d.]+) % \[([\d.]+), "
                 r"([\d.]+)\] \| ([\d.]+) % \| ([\d.]+) % (previous speaker|"
                 r"mention-then-speaker) \|$", re.MULTILINE)


def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


def test_the_docs_table_is_what_eval_cv_prints() -> None:
    data = [str(require_shared(SOCIAL / name)) for name in ("friends-dev.jsonl",
                                                             "wau-dev.jsonl")]
    runs = {}
    for predictor, extra in (("fusion", ["--cv", "5"]), ("cues", [])):
        done = run_cli("eval", *data, "--predictor", predictor, *extra, "--json",
                       timeout=900)
        assert done.returncode == 0, done.stderr
        runs[predictor] = json.loads(done.stdout.strip().splitlines()[-1])["by_source"]
    rows = ROW.findall((ROOT / "docs" / "evaluation.md").read_text())
    assert len(rows) == 4, rows
    for source, task, n, fused, low, high, cues, best, rule in rows:
        fusion = runs["fusion"][SOURCES[source]][task]
        # The interval from the counts: the JSON's, rounded to 4 places, rounds twice.
        right = round(fusion["accuracy"] * fusion["n"])
        assert (n, fused, low, high) == (
            str(fusion["n"]), _percent(fusion["accuracy"]),
            *map(_percent, wilson(right, fusion["n"]))), (source, task)
        assert cues == _percent(runs["cues"][SOURCES[source]][task]["accuracy"])
        baselines = fusion["baselines"]
        named = max((b for b in baselines if b != "chance"), key=baselines.__getitem__)
        assert (BASELINES[rule], best) == (named, _percent(baselines[named])), (source, task)
