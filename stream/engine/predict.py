"""The engine as a pipeline stage: after every turn, Online-MMSI-style answers.

For each turn the session takes the key frames and the utterance (biased toward
the turn's speaker), then answers by scoring candidates (`Session.ask`):

- `addressee`: whom the speaker addresses, among the other players in view;
- `pronoun`: for each second- or third-person pronoun in the utterance, whom it
  refers to, among the other players;
- `mentioned`: who is mentioned, among all players in view, or nobody.

The model works in a thread so the event loop (sources, sinks, MQTT) keeps
running while it computes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from stream.engine.config import PredictorConfig
from stream.errors import ModelError
from stream.frames import Answer, Item, Prediction, Turn
from stream.runtime import Stage

log = logging.getLogger(__name__)
CHARACTERS_PER_WORD = 12
"""With `engine.max_turn_words`, the characters a turn may bring (a word is about six)."""

if TYPE_CHECKING:
    from stream.engine.backends import Backend
    from stream.engine.session import UtteranceReport

PRONOUNS = ("you", "your", "he", "him", "his", "she", "her", "they", "them", "their")
NOBODY = "nobody"


def pronouns(text: str) -> list[str]:
    """The distinct pronouns of `PRONOUNS` in the text, in order of first use."""
    seen: list[str] = []
    for word in re.findall(r"[a-z']+", text.lower()):
        if word in PRONOUNS and word not in seen:
            seen.append(word)
    return seen


def spread(count: int, wanted: int) -> list[int]:
    """`wanted` indices out of `count`, evenly spaced from the first (all when 0 or more)."""
    if wanted == 0 or wanted >= count:
        return list(range(count))
    return sorted({round(i * (count - 1) / max(wanted - 1, 1)) for i in range(wanted)})


def key_frames(turn: Turn, wanted: int) -> Turn:
    """The turn with only the key frames (and their players) the engine takes: what a
    session is rebuilt from and what a remote engine is sent."""
    chosen = spread(len(turn.keyframes), wanted)
    return replace(turn, keyframes=tuple(turn.keyframes[i] for i in chosen),
                   views=tuple(turn.views[i] for i in chosen))


def softmax(candidates: Sequence[str], scores: Sequence[float]) -> dict[str, float]:
    """The candidates' scores as probabilities (what prediction events carry)."""
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    total = sum(weights)
    return {c: w / total for c, w in zip(candidates, weights, strict=True)}


class Predictor:
    """A session plus the questions asked after each turn."""

    def __init__(self, backend: Backend, config: PredictorConfig,
                 names: dict[str, str] | None = None, *, attention: bool = False) -> None:
        # Imported here, not at the top: torch and transformers take seconds to import and
        # the command line (replay without --model, subscribe) must start at once.
        from stream.engine.session import Session

        if attention and not backend.sees_pictures:
            raise ModelError(f"--attention: model {config.model!r} reads no pictures (frames "
                             "reach it as text), so there is no attention over the frame to "
                             "draw; use a vision-language model such as Qwen2.5-VL")
        self.attention = attention
        """Export the biased heads' maps of every utterance (`Prediction.attention`)."""
        self.session = Session(backend, config)
        self.session.append_system(config.system)
        self.frames_per_turn = config.frames_per_turn
        self.max_words = config.max_turn_words
        self.players = {name: player for player, name in (names or {}).items()}
        """Name -> player id (`perception.names` the other way round)."""

    def speaker(self, turn: Turn) -> str | None:
        """Who said the turn: the face vote, else the transcript's speaker (as a player id
        when `perception.names` knows the name)."""
        if turn.vote is not None and turn.vote.speaker is not None:
            return turn.vote.speaker
        name = turn.speaker_name
        return self.players.get(name, name) if name else None

    def turn(self, turn: Turn) -> Prediction:
        began = time.perf_counter()
        speaker, report = self.take(turn)
        return self.answer(turn, speaker, report, began)

    def take(self, turn: Turn) -> tuple[str | None, UtteranceReport]:
        """The turn's key frames and utterance into the session, no questions: all a
        session rebuilt from its turns needs (questions leave the cache as it was)."""
        speaker = self.speaker(turn)
        taken = key_frames(turn, self.frames_per_turn)
        if taken.keyframes:
            self.session.append_frames(taken.keyframes, taken.views)
        words = self.words(turn, warn=True) or "(no words)"
        report = self.session.append_utterance(speaker, words, export=self.attention)
        return speaker, report

    def words(self, turn: Turn, warn: bool = False) -> str:
        """The turn's words as the engine takes them: at most `max_turn_words`, the first
        and the last half of a longer turn."""
        words = turn.text.split()
        text = turn.text
        if len(words) > self.max_words:
            if warn:
                log.warning("turn %d has %d words; the engine takes its first and last %d",
                            turn.index, len(words), self.max_words // 2)
            half = self.max_words // 2
            text = " ".join([*words[:half], "...", *words[-half:]])
        most = self.max_words * CHARACTERS_PER_WORD
        if len(text) > most:  # words without spaces between them: "he,he,he,..."
            if warn:
                log.warning("turn %d has %d characters in its words; the engine takes its "
                            "first and last %d", turn.index, len(text), most // 2)
            text = f"{text[:most // 2]} ... {text[-(most // 2):]}"
        return text

    def answer(self, turn: Turn, speaker: str | None, report: UtteranceReport,
               began: float) -> Prediction:
        """The turn's questions, asked of the session that has just taken it."""
        seen = sorted({v.player for views in turn.views for v in views})
        others = [p for p in seen if p != speaker]
        who = speaker or "the speaker"
        asked: list[tuple[str, str, list[str], str | None]] = []
        if others:
            asked.append(("addressee", f"Question: whom does {who} address? Answer:", others,
                          None))
            asked += [("pronoun", f'Question: when {who} says "{word}", who is it? Answer:',
                       others, word) for word in pronouns(self.words(turn))]
        if seen:
            asked.append(("mentioned", f"Question: whom does {who} mention? Answer:",
                          [*seen, NOBODY], None))
        scores = self.session.ask_many([(question, c) for _, question, c, _ in asked])
        answers = tuple(
            Answer(task, question, max(c, key=dict(zip(c, s, strict=True)).__getitem__),
                   dict(zip(c, s, strict=True)), target, probabilities=softmax(c, s))
            for (task, question, c, target), s in zip(asked, scores, strict=True))
        return Prediction(pts=turn.pts, turn=turn.index, start=turn.start, end=turn.end,
                          speaker=speaker, answers=answers,
                          latency_s=time.perf_counter() - began,
                          attention=report.heat_map() if self.attention else None)


class EngineStage(Stage):
    name = "engine"
    inputs = (Turn,)

    def __init__(self, config: PredictorConfig, names: dict[str, str] | None = None, *,
                 attention: bool = False) -> None:
        self.config, self.names, self.attention = config, names, attention
        self.predictor: Predictor | None = None
        self._fresh = False

    def reset(self) -> None:
        """The next turn starts a new session (a turn being computed finishes in the old)."""
        self._fresh = True

    async def start(self) -> None:
        from stream.engine.loading import load_backend  # slow to import, see Predictor

        assert self.config.model is not None, "the engine stage needs engine.model"
        backend = await asyncio.to_thread(
            load_backend, self.config.model, device=self.config.device,
            pixels=self.config.pixels, prompting=self.config.prompting, video=self.config.video)
        self.predictor = await asyncio.to_thread(Predictor, backend, self.config, self.names,
                                                 attention=self.attention)

    async def process(self, item: Item) -> Sequence[Item]:
        if not isinstance(item, Turn):
            return ()
        assert self.predictor is not None, "start() loads the model"
        if self._fresh:
            self._fresh = False
            self.predictor = await asyncio.to_thread(
                Predictor, self.predictor.session.backend, self.config, self.names,
                attention=self.attention)
        return (await asyncio.to_thread(self.predictor.turn, item),)
