"""`socialstream eval`: score a predictor on labelled items, beside the same run's baselines.

Items come in order and each is answered with only what was said before it (the
memory stitches each conversation's histories). With `--cv K` the fusion ranker is
retrained K times, each time on the other conversations' folds, and every item is
answered by a ranker that never saw its conversation: the figure to report on the dev
files. Without it the shipped (or `--weights`) ranker answers, which is the figure for
data it was not trained on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import log_softmax

from stream.engine.predict import softmax
from stream.tasks import baselines
from stream.tasks.features import features
from stream.tasks.items import TASKS, EvalItem, Loaded, Utterance
from stream.tasks.memory import Memory
from stream.tasks.predictors import EnginePredictor, FusionPredictor, Predictor, text_predictor
from stream.tasks.ranker import Ranker, fit, load_ranker

Z95 = 1.959963984540054


def wilson(right: int, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion: honest at small n and near 0 or 1."""
    if n == 0:
        return 0.0, 0.0
    p = right / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class TaskScore:
    right: int = 0
    n: int = 0
    baselines: dict[str, float] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.right / self.n if self.n else 0.0


@dataclass
class Report:
    predictor: str
    tasks: dict[str, TaskScore]
    latencies_ms: list[float]
    problems: list[str]
    notes: list[str]
    by_source: dict[str, dict[str, TaskScore]] = field(default_factory=dict)

    def latency(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else 0.0

    def to_json(self) -> dict[str, Any]:
        def task(s: TaskScore) -> dict[str, Any]:
            low, high = wilson(s.right, s.n)
            return {"accuracy": round(s.accuracy, 4), "n": s.n,
                    "interval95": [round(low, 4), round(high, 4)],
                    "baselines": {k: round(v, 4) for k, v in s.baselines.items()}}
        return {"tasks": {name: task(s) for name, s in self.tasks.items()},
                "by_source": {src: {name: task(s) for name, s in t.items()}
                              for src, t in self.by_source.items()},
                "predictor": self.predictor,
                "latency_ms_p50": round(self.latency(50), 3),
                "latency_ms_p95": round(self.latency(95), 3),
                "problems": len(self.problems)}


def source_of(item: EvalItem) -> str:
    return item.id.split("/", 1)[0]


Answerer = Callable[[int, EvalItem, Sequence[Utterance]], dict[str, float]]


def score(items: Sequence[EvalItem], answer: Answerer, name: str, loaded: Loaded
          ) -> Report:
    """Answer every labelled item in order (timed), then tally per task and per source. An
    item without an answer (asked live) is no evidence either way: it is not counted,
    here or in the baselines (it still carries its history into the memory)."""
    memory = Memory()
    tasks: dict[str, TaskScore] = {}
    by_source: dict[str, dict[str, TaskScore]] = {}
    latencies = []
    for k, item in enumerate(items):
        began = time.perf_counter()
        context = memory.context(item)
        if item.answer is None:
            continue
        probabilities = answer(k, item, context)
        latencies.append((time.perf_counter() - began) * 1000)
        pick = max(probabilities, key=probabilities.__getitem__) if probabilities else None
        for table in (tasks, by_source.setdefault(source_of(item), {})):
            s = table.setdefault(item.task, TaskScore())
            s.n += 1
            s.right += pick is not None and pick == item.answer
    _add_baselines(tasks, items)
    for source, table in by_source.items():
        _add_baselines(table, [i for i in items if source_of(i) == source])
    ordered = {t: tasks[t] for t in TASKS if t in tasks}
    return Report(name, ordered, latencies, [str(p) for p in loaded.problems], loaded.notes,
                  {src: {t: s[t] for t in TASKS if t in s} for src, s in by_source.items()})


def _add_baselines(table: dict[str, TaskScore], items: Sequence[EvalItem]) -> None:
    for task, s in table.items():
        chosen = [i for i in items if i.task == task and i.answer is not None]
        s.baselines = {"chance": sum(map(baselines.chance, chosen)) / len(chosen)}
        for base, rule in baselines.BASELINES.items():
            s.baselines[base] = sum(rule(i) == i.answer for i in chosen) / len(chosen)


def folds(items: Sequence[EvalItem], k: int, seed: int = 0) -> list[int]:
    """Each item's fold: whole conversations (episodes, games) go to one fold."""
    groups = sorted({item.group for item in items})
    order = np.random.RandomState(seed).permutation(len(groups))
    fold_of = {groups[g]: n % k for n, g in enumerate(order)}
    return [fold_of[item.group] for item in items]


@dataclass
class CrossValidation:
    """Rankers each trained without one fold, and what they were computed from."""

    fold: list[int]
    rankers: list[Ranker]
    contexts: list[tuple[Utterance, ...]]
    rows: list[np.ndarray]

    def __post_init__(self) -> None:
        self.predictors = [FusionPredictor(ranker) for ranker in self.rankers]

    def answer(self, j: int, item: EvalItem, context: Sequence[Utterance]
               ) -> dict[str, float]:
        """The answer of the ranker that never saw the item's fold (features recomputed,
        so the latency measured is a live item's)."""
        return self.predictors[self.fold[j]].predict(item, context)

    def logits(self, j: int, item: EvalItem) -> np.ndarray:
        weights = self.rankers[self.fold[j]].tasks.get(item.task)
        return np.zeros(0) if weights is None else weights.logits(self.rows[j])


def check_folds(items: Sequence[EvalItem], k: int) -> None:
    """ValueError unless each of `k` folds can hold a conversation with answers: folds are
    whole conversations, and one without a labelled item trains a ranker on nothing."""
    conversations = len({item.group for item in items if item.answer is not None})
    if not 2 <= k <= conversations:
        raise ValueError(f"--cv {k}: folds are whole conversations and the items hold "
                         f"{conversations} with answers; give 2 to {conversations} folds")


def cross_validated(items: Sequence[EvalItem], k: int, seed: int = 0) -> CrossValidation:
    check_folds(items, k)
    memory = Memory()
    contexts = [memory.context(item) for item in items]
    rows = [features(item, context) for item, context in zip(items, contexts, strict=True)]
    fold = folds(items, k, seed)
    rankers = []
    for f in range(k):
        train = [j for j in range(len(items)) if fold[j] != f]
        rankers.append(Ranker(fit([items[j] for j in train], [rows[j] for j in train], seed),
                              {"fold": f}))
    return CrossValidation(fold, rankers, contexts, rows)


def evaluate(loaded: Loaded, predictor: str = "fusion", cv: int = 0,
             weights: Path | None = None, engine: EnginePredictor | None = None,
             seed: int = 0) -> Report:
    items = loaded.items
    if predictor == "fusion" and cv:
        return score(items, cross_validated(items, cv, seed).answer,
                     f"fusion (cross-validated, {cv} folds by conversation)", loaded)
    chosen: Predictor
    if predictor == "engine":
        if engine is None:
            raise ValueError("the engine predictor needs --model")
        chosen = engine
    else:
        chosen = text_predictor(predictor, load_ranker(weights) if predictor == "fusion"
                                else None)

    def answer(j: int, item: EvalItem, context: Sequence[Utterance]) -> dict[str, float]:
        return chosen.predict(item, context)

    return score(items, answer, chosen.name, loaded)


def engine_comparison(loaded: Loaded, engines: Sequence[EnginePredictor], cv: int,
                      seed: int = 0) -> list[Report]:
    """One run, several answers per item: each engine alone, the cross-validated fusion
    without the engine, and with each engine's scores added at a weight chosen on the
    other folds (log-likelihood of the answers)."""
    items = loaded.items
    cv_run = cross_validated(items, cv, seed)
    fold = cv_run.fold
    cue_logits = [cv_run.logits(j, item) for j, item in enumerate(items)]
    reports = [score(items, cv_run.answer, f"fusion, no engine (cross-validated, {cv} folds)",
                     loaded)]
    for engine in engines:
        scores = [engine.log_probabilities(item, context)
                  for item, context in zip(items, cv_run.contexts, strict=True)]
        reports.append(score(items, lambda j, item, context, s=scores:
                             softmax(item.candidates, s[j]), engine.name, loaded))
        chosen_w = [_engine_weight(items, cue_logits, scores, [g != f for g in fold])
                    for f in range(cv)]
        reports.append(score(
            items, lambda j, item, context, s=scores, w=chosen_w:
            softmax(item.candidates, cue_logits[j] + w[fold[j]] * s[j]) if cue_logits[j].size
            else {}, f"fusion + {engine.name} (weights per fold: {chosen_w})", loaded))
    return reports


ENGINE_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


def _engine_weight(items: Sequence[EvalItem], cue_logits: Sequence[np.ndarray],
                   scores: Sequence[np.ndarray], train: Sequence[bool]) -> float:
    """The engine's weight beside the ranker's logits with the best log-likelihood of the
    answers on the training items only."""
    def loss(w: float) -> float:
        total = 0.0
        for item, cues, engine, use in zip(items, cue_logits, scores, train, strict=True):
            if use and cues.size and item.answer in item.candidates:
                total -= log_softmax(cues + w * engine)[item.candidates.index(item.answer)]
        return total

    return min(ENGINE_WEIGHTS, key=loss)
