"""The dialogue state of a live or replayed session: the turns so far, with the names in
their words tied to players, turned into the same items the predictors answer on
labelled data.

Names are learned online. A transcript line that carries a speaker name, said while a
face was voted the speaker, ties that name to that player outright. A vocative ("Ben,
did you ...", "... kind of you, Clara.") is weaker evidence: the named person is most
likely the one who answers next or the one just answered. Evidence accumulates per
(name, player) and names go to players one to one by the best total
(`scipy.optimize.linear_sum_assignment`), so one early guess can be overturned later.
"""

from __future__ import annotations

import itertools
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from stream.tasks.items import MASK, EvalItem, Target, Utterance
from stream.tasks.memory import LONGEST

TRANSCRIPT_WEIGHT = 5.0
VOCATIVE_WEIGHT = 1.0
_NOT_NAMES = """I Oh Ok Okay Yes Yeah No Well So Hey Hi Hello Please Thanks Sorry
Right Sure Wait Look Listen Come Now Then And But Or Just Really Honestly Almost Maybe
Good Great Fine Alright Um Uh Ah Wow Guys Everyone Everybody Man Dude Sir Madam"""
NOT_NAMES = frozenset(_NOT_NAMES.split())
NAME = re.compile(r"\b[A-Z][a-z]+\b")
THIRD_PERSON = {"he", "him", "his", "she", "her", "hers", "himself", "herself"}
SECOND_PERSON = {"you", "your", "yours", "yourself"}


def vocative_names(text: str) -> list[str]:
    """Capitalised words set off as a form of address: opening the utterance or a
    sentence and followed by a comma, or closing a sentence after a comma."""
    found = []
    for match in NAME.finditer(text):
        word = match.group()
        if word in NOT_NAMES:
            continue
        before = text[:match.start()].rstrip()
        after = text[match.end():].lstrip()
        opens = not before or before[-1] in ".!?"
        if (opens and after[:1] in (",", "!", "?")) or \
                (before.endswith(",") and (not after or after[0] in ".!?")):
            found.append(word)
    return found


@dataclass
class Names:
    """Name <-> player, learned from transcripts and vocatives."""

    fixed: dict[str, str] = field(default_factory=dict)
    """Name -> player known from the configuration (`perception.names`)."""
    evidence: dict[tuple[str, str], float] = field(default_factory=dict)
    _known: dict[str, str] | None = field(default=None, init=False, repr=False)
    """The assignment for the evidence so far: a turn reads it several times."""

    def add(self, name: str, player: str, weight: float) -> None:
        self.evidence[(name, player)] = self.evidence.get((name, player), 0.0) + weight
        self._known = None

    def known(self) -> dict[str, str]:
        """Name -> player: the configured ones, then the best one-to-one assignment."""
        if self._known is None:
            self._known = self._assign()
        return dict(self._known)

    def _assign(self) -> dict[str, str]:
        result = dict(self.fixed)
        taken = set(result.values())
        pairs = {k: v for k, v in self.evidence.items()
                 if k[0] not in result and k[1] not in taken}
        if pairs:
            names = sorted({n for n, _ in pairs})
            players = sorted({p for _, p in pairs})
            gain = np.zeros((len(names), len(players)))
            for (n, p), w in pairs.items():
                gain[names.index(n), players.index(p)] = w
            for r, c in zip(*linear_sum_assignment(gain, maximize=True), strict=True):
                if gain[r, c] > 0:
                    result[names[r]] = players[c]
        return result

    def spoken(self, text: str) -> list[str]:
        """Names heard in the text that are or could be a player's: known ones and any
        that has evidence."""
        candidates = set(self.fixed) | {n for n, _ in self.evidence}
        return [w for w in NAME.findall(text) if w in candidates]


@dataclass(frozen=True)
class Question:
    task: str
    """`addressee`, `pronoun` or `mentioned` (as in prediction events)."""
    item: EvalItem
    target: str | None = None
    """The pronoun (`pronoun`) or the name (`mentioned`) asked about."""


@dataclass
class Dialogue:
    """The conversation so far, as player-tagged utterances: the last `LONGEST`, as eval's
    memory keeps, so that a session of hours costs per turn what one of minutes does."""

    names: Names = field(default_factory=Names)
    said: deque[Utterance] = field(default_factory=lambda: deque(maxlen=LONGEST))
    raw: deque[tuple[str | None, str]] = field(default_factory=lambda: deque(maxlen=LONGEST))
    """Each turn's speaker and words as heard (names not yet replaced)."""
    players: set[str] = field(default_factory=set)
    turns: int = 0
    """Turns appended in all (`said` keeps the last `LONGEST`)."""

    @classmethod
    def with_names(cls, names: Mapping[str, str] | None) -> Dialogue:
        """`names` is player -> name, as in `perception.names`."""
        return cls(Names(fixed={name: player for player, name in (names or {}).items()}))

    def tagged(self, text: str, known: Mapping[str, str]) -> str:
        for name, player in sorted(known.items(), key=lambda kv: -len(kv[0])):
            text = re.sub(rf"\b{re.escape(name)}\b", f"[{player}]", text)
        return text

    def learn(self, speaker: str | None, text: str, speaker_name: str | None) -> None:
        """Evidence from a new turn, before it is asked about."""
        if speaker is not None and speaker_name:
            self.names.add(speaker_name, speaker, TRANSCRIPT_WEIGHT)
        if speaker is not None and self.raw:
            previous_speaker, previous_text = self.raw[-1]
            for name in vocative_names(previous_text):  # the named one answers
                if previous_speaker != speaker:
                    self.names.add(name, speaker, VOCATIVE_WEIGHT)
        if speaker is not None:
            earlier = next((s for s, _ in reversed(self.raw) if s and s != speaker), None)
            for name in vocative_names(text):  # ... or was just answered
                if earlier is not None:
                    self.names.add(name, earlier, VOCATIVE_WEIGHT / 2)

    def questions(self, speaker: str | None, text: str, seen: Sequence[str]) -> list[Question]:
        """The turn's questions as items over the players in view (and everyone known):
        whom the speaker addresses, whom each pronoun refers to, who an unplaced name is."""
        who = speaker or "Someone"
        players = sorted({*seen, *self.players} - {"Someone"})
        candidates = tuple(p for p in players if p != speaker)
        if not candidates:
            return []
        known = self.names.known()
        tagged = self.tagged(text, known)
        history = tuple(itertools.islice(self.said, max(0, len(self.said) - 10), None))

        def item(task: str, words: str, target: Target | None = None) -> EvalItem:
            return EvalItem(id=f"live/{self.turns}/{task}", task=task,
                            players=tuple(players), history=history, speaker=who,
                            text=words, candidates=candidates, target=target, group="live")

        asked = [Question("addressee", item("STI", tagged))]
        lowered = tagged.lower()
        seen_words: set[str] = set()
        for match in re.finditer(r"[a-z']+", lowered):
            word = match.group()
            if word in THIRD_PERSON and word not in seen_words:
                seen_words.add(word)
                asked.append(Question("pronoun", item("PCR", tagged,
                                                      Target(word, match.start())), word))
        for name in dict.fromkeys(w for w in NAME.findall(tagged)
                                  if w in set(vocative_names(text)) - set(known)):
            masked = re.sub(rf"\b{re.escape(name)}\b", MASK, tagged)
            asked.append(Question("mentioned", item("MPP", masked), name))
        return asked

    def append(self, speaker: str | None, text: str) -> None:
        """The turn joins the history once it has been asked about."""
        known = self.names.known()
        self.raw.append((speaker, text))
        self.said.append(Utterance(speaker or "Someone", self.tagged(text, known)))
        self.turns += 1
        if speaker is not None:
            self.players.add(speaker)

    def mentioned(self, text: str) -> list[str]:
        """Players named in the words by a name already tied to them."""
        known = self.names.known()
        return list(dict.fromkeys(known[w] for w in NAME.findall(text) if w in known))

    def context(self) -> tuple[Utterance, ...]:
        return tuple(self.said)


