"""Cue features of one (item, candidate) pair: what the dialogue so far says about them.

Each feature is a number per candidate, computed from the item alone (its history,
speaker and words), so a prediction for turn N never sees a later turn. Features come
in families:

- turn-taking: how recently the candidate spoke, whether they spoke just before
  the speaker, whether their last words were a question or said "you";
- mentions: how recently they were named, by whom, whether the speaker names them
  in this utterance, as a vocative ("Ben, did you ...") or not;
- the words: overlap of the utterance (or the words around the masked name or the
  pronoun) with the candidate's own past words and with what was said about them,
  what they claimed to be ("I was the seer") against the words around the focus,
  and the pronoun's gender matched against how the candidate has been referred to.

Tried and left out (cross-validated on the dev files, no gain): the words next to the
focus hashed and crossed with the relations above, and sentence-embedding similarity
(all-MiniLM-L6-v2) of the utterance to each candidate's past words, which also costs
11 ms per utterance on this CPU against a 5 ms budget.

Perception cues (head yaw toward the candidate, visibility) enter as extra features
when a turn comes from video (`Perceived`); they are zero for text items.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from stream.tasks.items import MASK, MENTION, EvalItem, Utterance

WORD = re.compile(r"[a-z][a-z']*|\[[a-z]+\d+\]|\[mask\]|[?!,.]")
_STOP_WORDS = """a about after again all also am an and any are as at be because been before
being but by can could did do does doing don't down for from had has have having he her here
hers him his how i i'm if in into is it it's its just know like me more my no not now of off oh
okay on one or our out over really right say said see she so some than that that's the their
them then there they this to too uh um up us very was we well were what when where which who
why will with would yeah yes you your you're yep gonna got get go going think i'll let's"""
STOP = frozenset(_STOP_WORDS.split())
MALE = frozenset(("he", "him", "his", "himself", "he's", "he'll", "he'd", "guy", "man", "dude",
                  "boy", "sir", "mr", "brother", "husband", "boyfriend", "father", "dad"))
FEMALE = frozenset(("she", "her", "hers", "herself", "she's", "she'll", "she'd", "girl", "woman",
                    "lady", "ma'am", "mrs", "ms", "miss", "sister", "wife", "girlfriend",
                    "mother", "mom"))
PRONOUN_GENDER = {"he": 1, "him": 1, "his": 1, "himself": 1, "she": -1, "her": -1, "hers": -1,
                  "herself": -1}
SECOND = frozenset(("you", "your", "you're", "yours", "yourself", "you've", "you'll", "you'd"))
BASE = (
    "bias",
    "spoke_last", "spoke_second_last", "spoke_recency", "spoke_share", "never_spoke",
    "spoke_right_after_speaker", "last_words_question", "last_words_you",
    "named_last", "named_recency", "named_share", "named_by_speaker", "named_speaker",
    "named_here", "vocative_here", "vocative_history_to_speaker", "vocative_speaker_to",
    "addressed_speaker",
    "overlap_own_words", "overlap_said_about", "overlap_local_own", "overlap_local_about",
    "gender_match", "gender_clash", "third_person_here",
    "spoke_share_long", "named_share_long", "named_recency_long", "claim_local", "claim_any",
    "quiet", "overlap_own_long", "overlap_local_own_long",
    "yaw_toward", "visible", "cue_rule",
)


INDEX = {name: i for i, name in enumerate(BASE)}
"""Column of each feature."""


def feature_names() -> list[str]:
    return list(BASE)


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def content(tokens: Sequence[str]) -> set[str]:
    return {w for w in tokens if len(w) > 2 and w not in STOP and not w.startswith("[")}


def _overlap(a: set[str], b: set[str]) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / math.sqrt(len(a) * len(b))


@dataclass(frozen=True)
class Perceived:
    """What video said about the candidates at the turn (absent for text)."""
    yaw_toward: Mapping[str, float]
    """How squarely the speaker's head pointed at each candidate, 0..1."""
    visible: Mapping[str, float]
    """Share of the turn's frames each candidate was seen in."""


def focus(item: EvalItem) -> tuple[int, int] | None:
    """Character span the question is about: the pronoun (PCR) or the first mask (MPP)."""
    if item.task == "PCR" and item.target is not None:
        return item.target.start, item.target.start + len(item.target.word)
    if item.task == "MPP" and MASK in item.text:
        start = item.text.index(MASK)
        return start, start + len(MASK)
    return None


def _local(item: EvalItem, width: int = 6) -> set[str]:
    span = focus(item)
    if span is None:
        return content(words(item.text))
    return content(words(item.text[:span[0]])[-width:] + words(item.text[span[1]:])[:width])


CLAIM = re.compile(r"\b(?:i was|i am|i'm|im|i've been|i got)\s+(?:the |a |an |just )?([a-z']+)")


def claims(text: str) -> set[str]:
    """What a speaker says they are or were ("I was the seer", "I'm a doctor")."""
    return {w for w in CLAIM.findall(text.lower()) if w not in STOP}


def _gender_evidence(item: EvalItem, context: Sequence[Utterance]) -> dict[str, int]:
    """Per player: male minus female words right after they were named (in the history and
    the utterance outside the focus), a rough guess at how they are referred to."""
    evidence: dict[str, int] = {}
    texts = [u.text for u in context]
    span = focus(item)
    texts.append(item.text if span is None else item.text[:span[0]] + " " + item.text[span[1]:])
    for text in texts:
        for match in MENTION.finditer(text):
            following = words(text[match.end():])[:8]
            score = sum(w in MALE for w in following) - sum(w in FEMALE for w in following)
            if score:
                evidence[match.group(1)] = evidence.get(match.group(1), 0) + score
    return evidence


def vocatives(text: str) -> list[str]:
    """Players addressed by name: `[PlayerN]` opening the utterance or a sentence, or
    closing it, set off by a comma or ending the sentence."""
    found = []
    for match in MENTION.finditer(text):
        before = text[:match.start()].rstrip()
        after = text[match.end():].lstrip()
        opens = not before or before[-1] in ".!?,"
        closes = not after or after[0] in ".!?,"
        if (opens and after[:1] in (",", "?", "!")) or (before.endswith(",") and closes) \
                or (opens and not after):
            found.append(match.group(1))
    return found


def features(item: EvalItem, context: Sequence[Utterance] | None = None,
             perceived: Perceived | None = None) -> np.ndarray:
    """One row per candidate, columns as `feature_names()`. `context` is everything said
    before the item in its conversation (`Memory.context`), the item's history if None:
    recency comes from the last ten utterances, knowledge (who claimed what, who is "he",
    who spoke how much) from all of it."""
    history = item.history
    long = tuple(context) if context else history
    n = len(history)
    index = INDEX
    rows = np.zeros((len(item.candidates), len(BASE)), dtype=np.float64)

    spoke_at: dict[str, list[int]] = {}
    named_at: dict[str, list[int]] = {}
    named_by: dict[tuple[str, str], int] = {}
    own_words: dict[str, set[str]] = {}
    about: dict[str, set[str]] = {}
    for k, u in enumerate(history):
        toks = words(u.text)
        bag = content(toks)
        for s in u.speakers():
            spoke_at.setdefault(s, []).append(k)
            own_words.setdefault(s, set()).update(bag)
        for m in MENTION.findall(u.text):
            named_at.setdefault(m, []).append(k)
            about.setdefault(m, set()).update(bag)
            for s in u.speakers():
                named_by[(s, m)] = named_by.get((s, m), 0) + 1
    others = [s for u in reversed(history) for s in u.speakers() if s != item.speaker]
    order = list(dict.fromkeys(others))
    named_order = list(dict.fromkeys(m for u in reversed(history)
                                     for m in reversed(MENTION.findall(u.text))))
    here = MENTION.findall(item.text)
    vocative_here = vocatives(item.text)
    utterance = content(words(item.text))
    local = _local(item)
    gender = _gender_evidence(item, long)
    long_spoke: dict[str, list[int]] = {}
    long_named: dict[str, list[int]] = {}
    long_words: dict[str, set[str]] = {}
    claimed: dict[str, set[str]] = {}
    for k, u in enumerate(long):
        bag = content(words(u.text))
        for s in u.speakers():
            long_spoke.setdefault(s, []).append(k)
            long_words.setdefault(s, set()).update(bag)
            claimed.setdefault(s, set()).update(claims(u.text))
        for m in MENTION.findall(u.text):
            long_named.setdefault(m, []).append(k)
    n_long = len(long)
    long_total_named = sum(len(v) for v in long_named.values()) or 1
    local_all = set(words(item.text)) if focus(item) is None else _local(item, width=4)
    pronoun = item.target.word.lower() if item.target is not None else ""
    pronoun_gender = PRONOUN_GENDER.get(pronoun, 0)
    if item.task == "MPP":
        span = focus(item)
        after = words(item.text[span[1]:])[:8] if span else []
        pronoun_gender = (1 if any(w in MALE for w in after)
                          else -1 if any(w in FEMALE for w in after) else 0)
    last_speaker_turn = max(spoke_at.get(item.speaker, [-1]))
    total_named = sum(len(v) for v in named_at.values()) or 1

    for row, c in zip(rows, item.candidates, strict=True):
        def put(name: str, value: float, row: np.ndarray = row) -> None:
            row[index[name]] = value

        put("bias", 1.0)
        spoke = spoke_at.get(c, [])
        last = spoke[-1] if spoke else None
        put("spoke_last", float(bool(order) and order[0] == c))
        put("spoke_second_last", float(len(order) > 1 and order[1] == c))
        put("spoke_recency", 0.0 if last is None else 1.0 / (n - last))
        put("spoke_share", len(spoke) / n if n else 0.0)
        put("never_spoke", float(not spoke))
        put("spoke_right_after_speaker",
            float(last is not None and last_speaker_turn >= 0 and last == last_speaker_turn + 1))
        last_words = words(history[last].text) if last is not None else []
        put("last_words_question", float(last is not None and "?" in last_words
                                         and last == n - 1))
        put("last_words_you", float(last is not None and last >= n - 2
                                    and any(w in SECOND for w in last_words)))
        named = named_at.get(c, [])
        put("named_last", float(bool(named_order) and named_order[0] == c))
        put("named_recency", 1.0 / (n - named[-1]) if named else 0.0)
        put("named_share", len(named) / total_named)
        put("named_by_speaker", float(named_by.get((item.speaker, c), 0) > 0))
        put("named_speaker", float(named_by.get((c, item.speaker), 0) > 0))
        put("named_here", float(here.count(c)))
        put("vocative_here", float(c in vocative_here))
        put("vocative_history_to_speaker",
            float(any(c in u.speakers() and item.speaker in vocatives(u.text)
                      for u in history[-3:])))
        put("vocative_speaker_to",
            float(any(item.speaker in u.speakers() and c in vocatives(u.text)
                      for u in history[-4:])))
        put("addressed_speaker", float(
            last is not None and last >= n - 2 and any(w in SECOND for w in last_words)
            and last_speaker_turn < last))
        put("overlap_own_words", _overlap(utterance, own_words.get(c, set())))
        put("overlap_said_about", _overlap(utterance, about.get(c, set())))
        put("overlap_local_own", _overlap(local, own_words.get(c, set())))
        put("overlap_local_about", _overlap(local, about.get(c, set())))
        g = gender.get(c, 0)
        put("gender_match", float(pronoun_gender != 0 and g * pronoun_gender > 0))
        put("gender_clash", float(pronoun_gender != 0 and g * pronoun_gender < 0))
        put("third_person_here", float(item.task == "PCR" and c in here))
        put("spoke_share_long", len(long_spoke.get(c, [])) / n_long if n_long else 0.0)
        put("named_share_long", len(long_named.get(c, [])) / long_total_named)
        put("named_recency_long", 1.0 / math.log2(2 + n_long - long_named[c][-1])
            if c in long_named else 0.0)
        put("claim_local", float(bool(claimed.get(c, set()) & local_all)))
        put("claim_any", float(bool(claimed.get(c, set()) & set(words(item.text)))))
        put("quiet", float(n_long > 0 and len(long_spoke.get(c, [])) <= 1))
        put("overlap_own_long", _overlap(utterance, long_words.get(c, set())))
        put("overlap_local_own_long", _overlap(local, long_words.get(c, set())))
        if perceived is not None:
            put("yaw_toward", perceived.yaw_toward.get(c, 0.0))
            put("visible", perceived.visible.get(c, 0.0))
    rows[:, index["cue_rule"]] = rule_pick(item, rows)
    return rows


RULES = {
    "STI": ("vocative_here", "addressed_speaker", "spoke_last", "yaw_toward", "spoke_recency"),
    "PCR": ("gender_match", "third_person_here", "named_recency", "named_share_long"),
    "MPP": ("claim_local", "named_recency", "spoke_last", "named_share_long"),
}
"""The `cues` predictor: per task, the cues in the order a careful reader checks them."""
VETO = {"PCR": "gender_clash", "MPP": "named_here"}
"""A cue that rules a candidate out: a pronoun of the other gender; for MPP, a name
still spoken elsewhere in the utterance (every mention of the answer is masked)."""


def rule_pick(item: EvalItem, rows: np.ndarray) -> np.ndarray:
    """One-hot over the candidates: the first cue of `RULES` decides, the next break ties."""
    index = INDEX
    order = RULES.get(item.task, ())
    score = np.zeros(len(item.candidates))
    for rank, name in enumerate(order):
        score += rows[:, index[name]] * 10.0 ** (len(order) - rank)
    if item.task in VETO:
        score -= rows[:, index[VETO[item.task]]] * 1e6
    pick = np.zeros(len(item.candidates))
    pick[int(np.argmax(score))] = 1.0
    return pick
