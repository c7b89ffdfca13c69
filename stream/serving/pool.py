"""Many conversations on one warm model: a session per conversation, all caches under one
memory budget.

A site with many cameras should load its model once. The pool keeps one `Predictor`
(a KV-cached session) per conversation id and, after each turn, evicts whole sessions,
least recently used first, until the caches fit `budget_bytes` again. What it never
drops is a conversation's turns: a session that comes back is rebuilt by taking its
turns again, in order, without their questions. The engine is deterministic and the
questions leave a session's cache as it was (`Session.ask_many`), so the rebuilt cache
is bit-identical to that of a session that never left (a test checks it), and so are
its later answers.

With a `TurnLog` the turns are on disk instead of in memory, and a new pool over the
same folder (another process, after a crash) continues every conversation where it
stopped, with the answers an uninterrupted run gives (a test checks it). Pools may
share a log: one that finds a session's log grown since it last served it (another
replica took turns) rebuilds that session before taking the next turn. Either way only
the key frames the engine takes are kept.

One turn index, one answer, by construction: a turn is decided and taken while holding
the pool's lock (one thread at a time) and, with a log, the session's lock in the log
(one process at a time), so whoever holds them sees every turn taken before. The
ordering contract: a session takes turns in the order they arrive, and each index must
be above every index it took. A gap is taken (the edge gave a turn up) with a warning. An
index it took before is a repeat: answered as the first time, taken once. A lower
index it never took arrived late (turns sent side by side instead of each after the
answer to the one before) and is refused (`TurnConflict`), as are other words under an
index it took.

The session being served is never evicted, so the budget holds whenever more than one
session is in memory; a single session larger than the budget stays alone (its own
context budget, `engine.max_tokens`, bounds it).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stream.engine.cache import cache_bytes
from stream.engine.config import PredictorConfig
from stream.engine.predict import Predictor, key_frames
from stream.frames import Prediction, Turn
from stream.serving.turnlog import TurnLog

if TYPE_CHECKING:
    from stream.engine.backends import Backend
    from stream.engine.session import UtteranceReport

log = logging.getLogger(__name__)


class TurnConflict(ValueError):
    """The session cannot take the turn as sent, and sending it again would not help."""


class SessionsFull(RuntimeError):
    """A new session beyond the most the pool's log may hold."""


@dataclass
class _Conversation:
    turns: list[Turn] = field(default_factory=list)
    """Every turn taken, in order, with the key frames the engine took: what a rebuild
    replays (empty when the pool has a turn log)."""
    logged: tuple[int, int, int] = (0, 0, 0)
    """With a turn log: its version (`TurnLog.version`) when the resident session last
    matched it."""
    last: int | None = None
    """The index of the last turn taken (from the kept turns when the session was not in
    memory)."""
    names: dict[str, str] | None = None
    """The edge's player names, as its last turn gave them."""
    taken: tuple[int, str, UtteranceReport] | None = None
    """The last turn the resident session took (index, words, its report): what answers
    it again without keeping its pictures."""


@dataclass(frozen=True)
class PoolStats:
    sessions: int
    resident: int
    cached_bytes: int
    evictions: int
    rebuilds: int
    rebuilt_turns: int


class SessionPool:
    def __init__(self, backend: Backend, config: PredictorConfig, budget_bytes: int,
                 names: dict[str, str] | None = None, log: TurnLog | None = None) -> None:
        if budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
        self.backend, self.config, self.budget = backend, config, budget_bytes
        self.names, self.log = names, log
        self._conversations: dict[str, _Conversation] = {}
        self._resident: OrderedDict[str, Predictor] = OrderedDict()
        """Sessions in memory, least recently used first."""
        self.evictions = self.rebuilds = self.rebuilt_turns = 0
        self._lock = threading.Lock()
        self.limit: int | None = None
        """With a log: the most sessions of one scope (`turn`'s `scope`) it may hold; a new
        one beyond is refused (`SessionsFull`), decided under the pool's lock."""

    def turn(self, session: str, turn: Turn, names: dict[str, str] | None = None, *,
             scope: str = "") -> Prediction:
        """Take the turn into the conversation's session (rebuilt first if it was evicted)
        and answer its questions; then evict other sessions until the budget holds.
        `names`: the edge's player names (default: the pool's); `scope`: the start of
        `session` that the sessions counted against `limit` share (a token's). Safe from
        any thread."""
        with self._lock, (self.log.hold(session) if self.log is not None
                          else contextlib.nullcontext()):
            return self._turn(session, turn, names, scope)

    def _turn(self, session: str, turn: Turn, names: dict[str, str] | None,
              scope: str = "") -> Prediction:
        began = time.perf_counter()
        if session not in self._conversations and self.limit is not None \
                and self.log is not None and self.log.size(session) == 0 \
                and self.log.count(scope) >= self.limit:
            raise SessionsFull(f"the service holds {self.limit} sessions, its most; try "
                               "when idle ones are pruned")
        new = session not in self._conversations
        conversation = self._conversations.setdefault(session, _Conversation())
        try:
            return self._take(session, conversation, turn, names, began)
        except BaseException:
            if new and session not in self._resident:  # nothing of it was kept
                self._conversations.pop(session, None)
            raise

    def _take(self, session: str, conversation: _Conversation, turn: Turn,
              names: dict[str, str] | None, began: float) -> Prediction:
        if names:
            conversation.names = names
        predictor = self._current(session)
        history = None if predictor is not None else self._history(session)
        if history is not None:
            conversation.last = history[-1].index if history else None
        taken = conversation.taken
        if predictor is not None and taken is not None and taken[:2] == (turn.index, turn.text):
            # The last turn again (its reply was lost): the session in memory is the one
            # that answered it, and questions leave its cache as it was.
            return predictor.answer(turn, predictor.speaker(turn), taken[2], began)
        if conversation.last is not None and turn.index <= conversation.last:
            return self._again(session, turn, began,
                               self._history(session) if history is None else history)
        if conversation.last is not None and turn.index > conversation.last + 1:
            log.warning("session %r: turn %d follows turn %d; the turns between never came",
                        session, turn.index, conversation.last)
        if predictor is None:
            predictor = self._rebuild(session, history or [])
        try:
            speaker, report = predictor.take(turn)
            self._keep(session, turn)
            conversation.last = turn.index
            conversation.taken = (turn.index, turn.text, report)
        except BaseException:
            # Half a turn may be in the cache, or a turn the log does not have: drop the
            # session, the next turn rebuilds it from what was kept.
            del self._resident[session]
            raise
        prediction = predictor.answer(turn, speaker, report, began)
        self._fit(keep=session)
        return prediction

    def _predictor(self, session: str) -> Predictor:
        return Predictor(self.backend, self.config,
                         self._conversations[session].names or self.names)

    def _again(self, session: str, turn: Turn, began: float, history: list[Turn]
               ) -> Prediction:
        """A turn the session took before, sent again: its answer never reached the caller
        (a replica that logged it and died, a reply lost on the way, a bridge that
        restarted before passing it on). Taken twice it would be in the conversation
        twice; it is answered as the first time was, from the turns before it, and the
        conversation stays as it is. When it is the last turn and the session is not in
        memory (the usual case: another replica took it and died), the session built to
        answer it is the whole conversation, and stays: the next turn needs no rebuild."""
        first = next((t for t in history if t.index == turn.index), None)
        if first is None:
            raise TurnConflict(
                f"session {session!r}: turn {turn.index} came after turn {history[-1].index}"
                "; a session takes turns in order, each sent after the answer to the one "
                "before")
        if first.text != turn.text:
            raise TurnConflict(f"session {session!r} took other words as turn {turn.index}; "
                               "a turn index comes once per conversation")
        predictor = self._predictor(session)
        before = [t for t in history if t.index < turn.index]
        self.rebuilds += 1
        self.rebuilt_turns += len(before)
        for old in before:
            predictor.take(old)
        speaker, report = predictor.take(turn)
        prediction = predictor.answer(turn, speaker, report, began)
        if session not in self._resident and turn.index == history[-1].index:
            self._hold(session, predictor)
            self._fit(keep=session)
        return prediction

    def _history(self, session: str) -> list[Turn]:
        if self.log is None:
            return self._conversations[session].turns
        return self.log.turns(session)

    def forget(self, session: str) -> None:
        """The conversation is over: its cache and turns go."""
        with self._lock:
            self._conversations.pop(session, None)
            self._resident.pop(session, None)
            if self.log is not None:
                self.log.forget(session)

    def prune(self, idle_s: float) -> list[str]:
        """Forget the sessions whose log no one appended to for `idle_s` (`TurnLog.prune`),
        under the pool's lock, so that a turn being taken is never pruned under it."""
        assert self.log is not None, "pruning is by the turn log's times"
        with self._lock:
            gone = set(self.log.prune(idle_s))
            # A long id's file is named by a digest: matched by how the log lists it.
            for session in [s for s in self._conversations if self.log.listed(s) in gone]:
                self._conversations.pop(session, None)
                self._resident.pop(session, None)
        return sorted(gone)

    def cached_bytes(self) -> int:
        return sum(cache_bytes(p.session.cache) for p in self._resident.values())

    def resident(self) -> list[str]:
        """Sessions in memory, least recently used first."""
        return list(self._resident)

    def predictor(self, session: str) -> Predictor | None:
        """The session's predictor while it is in memory."""
        return self._resident.get(session)

    def stats(self) -> PoolStats:
        return PoolStats(sessions=len(self._conversations), resident=len(self._resident),
                         cached_bytes=self.cached_bytes(), evictions=self.evictions,
                         rebuilds=self.rebuilds, rebuilt_turns=self.rebuilt_turns)

    def _current(self, session: str) -> Predictor | None:
        """The session in memory, if it holds every turn taken (most recently used now)."""
        predictor = self._resident.get(session)
        if predictor is not None and self.log is not None \
                and self.log.version(session) != self._conversations[session].logged:
            # Another process sharing the log took turns of this session since: ours is
            # behind, so it is rebuilt from the log.
            del self._resident[session]
            predictor = None
        if predictor is not None:
            self._resident.move_to_end(session)
        return predictor

    def _rebuild(self, session: str, history: list[Turn]) -> Predictor:
        """The session from the turns it took (none for a new conversation)."""
        predictor = self._predictor(session)
        if history:
            self.rebuilds += 1
            self.rebuilt_turns += len(history)
            for old in history:
                predictor.take(old)
        self._hold(session, predictor)
        return predictor

    def _hold(self, session: str, predictor: Predictor) -> None:
        """Keep `predictor` in memory as the session, in step with the turn log's size
        (what it took last is known only when it took it here: `_take`)."""
        self._conversations[session].taken = None
        if self.log is not None:
            self._conversations[session].logged = self.log.version(session)
        self._resident[session] = predictor

    def _keep(self, session: str, turn: Turn) -> None:
        taken = key_frames(turn, self.config.frames_per_turn)
        if self.log is not None:
            self.log.append(session, taken)
            self._conversations[session].logged = self.log.version(session)
        else:
            self._conversations[session].turns.append(taken)

    def _fit(self, keep: str) -> None:
        total = self.cached_bytes()
        while total > self.budget and len(self._resident) > 1:
            oldest = next(s for s in self._resident if s != keep)
            total -= cache_bytes(self._resident.pop(oldest).session.cache)
            self.evictions += 1
