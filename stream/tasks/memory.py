"""The conversation so far, longer than one item's window.

An item carries at most ten earlier utterances, but who claimed what, who is called
"he" and who named whom are often said further back. Items of one conversation come
in order, each history overlapping the previous one, so the memory stitches the
histories into one transcript per conversation and hands each item everything said
before it. Only the past is ever added: an item's own utterance is not (its masked
name would be a hole), it enters through a later item's history like any other turn.

When an item does not line up with what was stitched so far (the first item of a
conversation, items out of order, a gap), the memory restarts from that item's
history, so a shuffled file costs context, never correctness.
"""

from __future__ import annotations

from stream.tasks.items import EvalItem, Utterance

LONGEST = 400
"""Utterances kept per conversation: enough for a whole game or scene, bounded for live."""


class Memory:
    def __init__(self) -> None:
        self.transcripts: dict[str, list[Utterance]] = {}

    def context(self, item: EvalItem) -> tuple[Utterance, ...]:
        """Everything said before the item in its conversation, oldest first; ends with
        the item's own history."""
        history = list(item.history)
        known = self.transcripts.get(item.group, [])
        if not history:
            self.transcripts[item.group] = []
            return ()
        kept = (_stitch(known, history) or history)[-LONGEST:]
        self.transcripts[item.group] = kept
        return tuple(kept)


def _stitch(known: list[Utterance], history: list[Utterance]) -> list[Utterance] | None:
    """`known` continued by `history` where the two overlap, or cut back to where
    `history` ends inside `known`; None when they do not line up."""
    if not known:
        return None
    # history ends inside what is known (an item asked about an earlier turn again).
    for end in range(len(known), 0, -1):
        start = end - len(history)
        if start >= 0 and known[start:end] == history:
            return known[:end]
    # history continues what is known: its head is the tail of the known transcript.
    for overlap in range(min(len(known), len(history) - 1), 0, -1):
        if known[-overlap:] == history[:overlap]:
            return known + history[overlap:]
    return None
