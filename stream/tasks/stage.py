"""Social predictions as a pipeline stage: after every turn, whom the speaker addresses,
whom each pronoun refers to and who an unplaced name is, from the dialogue so far.

The fusion predictor needs no model and answers in well under a millisecond, so it runs
in the event loop. When an engine model is configured, the engine stage
(`stream.engine.predict.EngineStage`, its model in a thread) answers first and its
scores ride along as `scores` beside the fusion probabilities: the shipped ranker was
trained without an engine, so it does not mix them in (docs/evaluation.md). With
`predictor: engine` the engine's answers are the prediction.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from stream.engine.predict import NOBODY
from stream.frames import Answer, Item, Prediction, Turn
from stream.runtime import Stage
from stream.tasks.dialogue import Dialogue
from stream.tasks.features import Perceived
from stream.tasks.predictors import Predictor, text_predictor


def perceived(turn: Turn, speaker: str | None) -> Perceived | None:
    """How squarely the speaker's head pointed at each other player (yaw toward their
    side of the picture) and how often each was seen, over the turn's key frames."""
    if not turn.views:
        return None
    toward: dict[str, float] = {}
    visible: dict[str, float] = {}
    frames = len(turn.views)
    for views in turn.views:
        me = next((v for v in views if v.player == speaker), None)
        for v in views:
            visible[v.player] = visible.get(v.player, 0.0) + 1.0 / frames
            if me is not None and v.player != speaker:
                side = 1.0 if _centre(v.box) > _centre(me.box) else -1.0
                toward[v.player] = toward.get(v.player, 0.0) + max(0.0, me.yaw * side) / frames
    return Perceived(toward, visible)


def _centre(box: tuple[float, float, float, float]) -> float:
    return (box[0] + box[2]) / 2


class SocialStage(Stage):
    name = "predict"
    inputs = (Turn,)

    def __init__(self, predictor: str = "fusion", names: Mapping[str, str] | None = None,
                 engine: Stage | None = None) -> None:
        if predictor == "engine" and engine is None:
            raise ValueError("the engine predictor needs a model (engine.model, --model)")
        self.engine_only = predictor == "engine"
        self.predictor: Predictor = text_predictor("fusion" if self.engine_only else predictor)
        self.names = names
        self.dialogue = Dialogue.with_names(names)
        self.engine = engine

    def reset(self) -> None:
        """New people at the table: the conversation starts afresh, here (names heard,
        history) and in the engine (its session), from the next turn on."""
        self.dialogue = Dialogue.with_names(self.names)
        reset = getattr(self.engine, "reset", None)
        if reset is not None:
            reset()

    async def start(self) -> None:
        if self.engine is not None:
            await self.engine.start()

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.stop()

    def speaker(self, turn: Turn) -> str | None:
        if turn.vote is not None and turn.vote.speaker is not None:
            return turn.vote.speaker
        if turn.speaker_name:
            return self.dialogue.names.known().get(turn.speaker_name, turn.speaker_name)
        return None

    async def process(self, item: Item) -> Sequence[Item]:
        if not isinstance(item, Turn):
            return ()
        answered = await self.respond(item, item)
        return (answered,) if answered is not None else ()

    async def respond(self, taken: Turn, seen: Turn) -> Prediction | None:
        """The engine (when there is one) takes `taken`, the predictor answers about `seen`:
        the same turn in a pipeline; in the MQTT bridge the engine's key frames and every
        key frame's players, which arrive apart."""
        dialogue = self.dialogue  # a reset while the engine works starts after this turn
        engine = None
        if self.engine is not None:
            engine = next((p for p in await self.engine.process(taken)
                           if isinstance(p, Prediction)), None)
        return self.answer(seen, engine, dialogue)

    def answer(self, turn: Turn, engine: Prediction | None,
               dialogue: Dialogue | None = None) -> Prediction | None:
        """The turn's prediction given the engine's (None when no engine answered): the
        engine's own with `predictor: engine`, else this predictor's with the engine's
        scores riding along."""
        if self.engine_only:
            return engine
        return self.predict(turn, engine, dialogue)

    def predict(self, turn: Turn, engine: Prediction | None = None,
                dialogue: Dialogue | None = None) -> Prediction:
        """The turn's prediction, the turn then in `dialogue` (default: the current one)."""
        began = time.perf_counter()
        dialogue = self.dialogue if dialogue is None else dialogue
        speaker = self.speaker(turn)
        text = turn.text or ""
        dialogue.learn(speaker, text, turn.speaker_name)
        seen = sorted({v.player for views in turn.views for v in views})
        scene = perceived(turn, speaker)
        context = dialogue.context()
        engine_scores = {(a.task, a.target): a.scores for a in engine.answers} if engine else {}
        answers = []
        for question in dialogue.questions(speaker, text, seen):
            probabilities = self.predictor.predict(question.item, context, scene)
            if not probabilities:
                continue
            answers.append(Answer(
                question.task, _question(question.task, speaker, question.target),
                max(probabilities, key=probabilities.__getitem__),
                engine_scores.get((question.task, question.target), {}), question.target,
                probabilities={k: round(v, 4) for k, v in probabilities.items()}))
        if not any(a.task == "mentioned" for a in answers) and (seen or dialogue.players):
            named = dialogue.mentioned(text)
            others = [p for p in named if p != speaker] or named
            answer = others[0] if others else NOBODY
            answers.append(Answer("mentioned", _question("mentioned", speaker, None), answer,
                                  engine_scores.get(("mentioned", None), {}), None,
                                  probabilities={answer: 1.0}))
        dialogue.append(speaker, text)
        compute = time.perf_counter() - began + (engine.latency_s if engine else 0.0)
        return Prediction(pts=turn.pts, turn=turn.index, start=turn.start, end=turn.end,
                          speaker=speaker, answers=tuple(answers), latency_s=compute,
                          predictor=self.predictor.name + ("+engine" if engine else ""),
                          known_at=turn.known_at,
                          attention=engine.attention if engine else None)


def _question(task: str, speaker: str | None, target: str | None) -> str:
    who = speaker or "the speaker"
    if task == "addressee":
        return f"whom does {who} address?"
    if task == "pronoun":
        return f'when {who} says "{target}", who is it?'
    if target is not None:
        return f"who is {target}?"
    return f"whom does {who} mention?"
