"""Predictors of the social tasks behind one interface, all online: an item's answer
uses only the item and what was said before it (`context`).

- `cues`: no model and nothing learned; a fixed order of the strongest cues per task
  (a vocative, then who spoke or was named last, agreeing in gender with the pronoun).
- `fusion` (default): the learned ranker over every cue feature (`ranker.py`); how
  much a language model's scores would add is measured by `eval --model`.
- `engine`: the KV-cached session's candidate log-likelihoods alone.
- the baselines of the data README, so `eval --predictor previous_speaker` works too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
from scipy.special import log_softmax

from stream.engine.predict import softmax
from stream.tasks import baselines
from stream.tasks.features import INDEX, Perceived, features
from stream.tasks.items import EvalItem, Utterance
from stream.tasks.ranker import Ranker, load_ranker

if TYPE_CHECKING:
    from stream.engine.backends import Backend
    from stream.engine.config import PredictorConfig


class Predictor(Protocol):
    name: str

    def predict(self, item: EvalItem, context: Sequence[Utterance],
                perceived: Perceived | None = None) -> dict[str, float]:
        """Each candidate's probability (they sum to 1); empty when it cannot answer."""
        ...


def _one_hot(item: EvalItem, pick: str | None) -> dict[str, float]:
    if pick is None or pick not in item.candidates:
        return {}
    return {c: float(c == pick) for c in item.candidates}


class CuesPredictor:
    """The cues in a fixed priority (`features.RULES`): what a careful reader checks first."""

    name = "cues"

    def predict(self, item: EvalItem, context: Sequence[Utterance],
                perceived: Perceived | None = None) -> dict[str, float]:
        x = features(item, context, perceived)
        return _one_hot(item, item.candidates[int(np.argmax(x[:, INDEX["cue_rule"]]))])


class FusionPredictor:
    name = "fusion"

    def __init__(self, ranker: Ranker | None = None) -> None:
        self.ranker = ranker or load_ranker()

    def logits(self, item: EvalItem, context: Sequence[Utterance],
               perceived: Perceived | None = None) -> np.ndarray:
        weights = self.ranker.tasks.get(item.task)
        if weights is None:
            return np.zeros(0)
        return weights.logits(features(item, context, perceived))

    def predict(self, item: EvalItem, context: Sequence[Utterance],
                perceived: Perceived | None = None) -> dict[str, float]:
        logits = self.logits(item, context, perceived)
        return softmax(item.candidates, logits) if logits.size else {}


class EnginePredictor:
    """A language model's answer: one fresh session per item holding the conversation so
    far (the last `keep` utterances), the utterance biased toward its speaker, then the
    task's question scored over the candidates (`Session.ask`)."""

    name = "engine"
    QUESTIONS: Mapping[str, str] = {
        "STI": "Question: whom does {speaker} address? Answer:",
        "PCR": 'Question: when {speaker} says "{word}", who is it? Answer:',
        "MPP": "Question: who is [MASK]? Answer:",
    }

    def __init__(self, backend: Backend, config: PredictorConfig, keep: int = 10,
                 bias: bool = True) -> None:
        self.backend, self.config, self.keep, self.bias = backend, config, keep, bias
        self.name = "engine" if bias else "engine (bias off)"

    def log_probabilities(self, item: EvalItem, context: Sequence[Utterance]) -> np.ndarray:
        from stream.engine.session import Session

        session = Session(self.backend, self.config)
        session.append_system(self.config.system)
        for utterance in list(context)[-self.keep:]:
            session.append_utterance(utterance.speaker, utterance.text, bias=self.bias)
        session.append_utterance(item.speaker, item.text, bias=self.bias)
        question = self.QUESTIONS[item.task].format(
            speaker=item.speaker, word=item.target.word if item.target else "")
        return log_softmax(np.array(session.ask(question, list(item.candidates)),
                                    dtype=np.float64))

    def predict(self, item: EvalItem, context: Sequence[Utterance],
                perceived: Perceived | None = None) -> dict[str, float]:
        return softmax(item.candidates, self.log_probabilities(item, context))


class BaselinePredictor:
    def __init__(self, name: str, rule: Callable[[EvalItem], str | None]) -> None:
        self.name, self.rule = name, rule

    def predict(self, item: EvalItem, context: Sequence[Utterance],
                perceived: Perceived | None = None) -> dict[str, float]:
        return _one_hot(item, self.rule(item))


TEXT_PREDICTORS = ("fusion", "cues", *baselines.BASELINES)
"""Predictors that need no model (`engine` needs `--model`)."""


def text_predictor(name: str, ranker: Ranker | None = None) -> Predictor:
    if name == "fusion":
        return FusionPredictor(ranker)
    if name == "cues":
        return CuesPredictor()
    if name in baselines.BASELINES:
        return BaselinePredictor(name, baselines.BASELINES[name])
    raise ValueError(f"unknown predictor {name!r} (one of {', '.join(TEXT_PREDICTORS)}, "
                     "engine)")
