"""The fusion predictor's learned ranker: one logistic regression per task over the cue
features, trained with scikit-learn and kept as plain JSON so a reader sees every weight.

A candidate's logit is `(x - mean) / scale . coef + intercept`; the item's
probabilities are the softmax of its candidates' logits. Training is reproducible:
the items are read in file order, the inner cross-validation that picks the
regularisation splits by conversation with a fixed seed, and lbfgs gives the same
weights for the same data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from stream.tasks.features import feature_names, features
from stream.tasks.items import TASKS, EvalItem
from stream.tasks.memory import Memory

SCHEMA = "socialstream.fusion-weights/1"
CS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
"""Regularisation strengths tried by the inner cross-validation."""


@dataclass(frozen=True)
class TaskWeights:
    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    c: float
    items: int

    def logits(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.coef + self.intercept


@dataclass(frozen=True)
class Ranker:
    tasks: dict[str, TaskWeights]
    meta: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **self.meta, "tasks": {
            task: {"items": w.items, "C": w.c, "intercept": round(w.intercept, 6),
                   "features": {name: {"weight": round(float(c), 6), "mean": round(float(m), 6),
                                       "scale": round(float(s), 6)}
                                for name, c, m, s in zip(w.features, w.coef, w.mean, w.scale,
                                                         strict=True)}}
            for task, w in self.tasks.items()}}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")


class WeightsError(ValueError):
    pass


def load_ranker(path: Path | None = None) -> Ranker:
    """The ranker in `path`, or the one shipped with the package."""
    if path is None:
        text = resources.files("stream.tasks").joinpath("fusion.json").read_text("utf-8")
        where = "the packaged fusion.json"
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise WeightsError(f"{path}: cannot read ({e.strerror})") from None
        where = str(path)
    try:
        data = json.loads(text)
        if data.get("schema") != SCHEMA:
            raise WeightsError(f"{where}: schema is {data.get('schema')!r}, expected {SCHEMA}")
        names = feature_names()
        tasks = {}
        for task, w in data["tasks"].items():
            table = w["features"]
            unknown = set(table) - set(names)
            if unknown:
                raise WeightsError(f"{where}: {task} has unknown features "
                                   f"{', '.join(sorted(unknown))} (trained by another version?)")
            tasks[task] = TaskWeights(
                features=tuple(names),
                mean=np.array([table.get(n, {}).get("mean", 0.0) for n in names]),
                scale=np.array([table.get(n, {}).get("scale", 1.0) for n in names]),
                coef=np.array([table.get(n, {}).get("weight", 0.0) for n in names]),
                intercept=float(w["intercept"]), c=float(w["C"]), items=int(w["items"]))
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        if isinstance(e, WeightsError):
            raise
        raise WeightsError(f"{where}: not a fusion weights file ({e})") from None
    return Ranker(tasks, {k: v for k, v in data.items() if k not in ("schema", "tasks")})


def matrices(items: Sequence[EvalItem]) -> list[np.ndarray]:
    """Feature rows of every item, each with the conversation so far (items in order)."""
    memory = Memory()
    return [features(item, memory.context(item)) for item in items]


def _fit_task(items: Sequence[EvalItem], rows: Sequence[np.ndarray], seed: int
              ) -> TaskWeights:
    from sklearn.linear_model import LogisticRegression

    x = np.vstack(rows)
    y = np.concatenate([[c == item.answer for c in item.candidates] for item in items])
    groups = np.concatenate([[item.group] * len(item.candidates) for item in items])
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    c = _choose_c(z, y, groups, seed) if len(set(groups)) >= 3 else 1.0
    model = LogisticRegression(C=c, max_iter=5000).fit(z, y)
    return TaskWeights(features=tuple(feature_names()), mean=mean, scale=scale,
                       coef=model.coef_[0], intercept=float(model.intercept_[0]), c=c,
                       items=len(items))


def _choose_c(z: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int) -> float:
    """The regularisation with the best held-out log-loss, whole conversations held out
    (never a conversation on both sides)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import GroupKFold

    splits = list(GroupKFold(n_splits=min(5, len(set(groups))), shuffle=True,
                             random_state=seed).split(z, y, groups))

    def loss(c: float) -> float:
        total = 0.0
        for train, test in splits:
            if len(set(y[train])) < 2:
                continue
            model = LogisticRegression(C=c, max_iter=5000).fit(z[train], y[train])
            total += log_loss(y[test], model.predict_proba(z[test])[:, 1], labels=[0, 1]) \
                * len(test)
        return total

    return min(CS, key=loss)


def fit(items: Sequence[EvalItem], rows: Sequence[np.ndarray], seed: int
        ) -> dict[str, TaskWeights]:
    """One ranker per task present among the answered items (all sources together, so the
    weights are not one show's habits); `rows` are the items' feature matrices."""
    tasks = {}
    for task in TASKS:
        chosen = [k for k, item in enumerate(items)
                  if item.task == task and item.answer is not None]
        if chosen:
            tasks[task] = _fit_task([items[k] for k in chosen], [rows[k] for k in chosen],
                                    seed)
    return tasks


def train(items: Sequence[EvalItem], seed: int = 0, sources: Sequence[Path] = ()) -> Ranker:
    usable = [item for item in items if item.answer is not None]
    tasks = fit(usable, matrices(usable), seed)
    meta = {"seed": seed, "trained_on": [
        {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16]}
        for path in sources if path.is_file()]}
    return Ranker(tasks, meta)
