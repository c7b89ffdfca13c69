"""A durable log of each conversation's turns: what a session is rebuilt from.

A session's cache is a function of its turns, so the turns are what must survive: a
pool that evicted a session, or a new process after a crash, takes them again and has
the same cache (`SessionPool`). Per session, `folder/<session id, %-quoted>.turns.jsonl`
holds one line per turn in the format the engine service receives turns in
(`stream/serving/wire.py`): its times, words, speaker, vote, and the key frames the
engine takes as PNG with the players seen in each. Each line is flushed with fsync
before the turn is answered.

Replicas (processes) share the folder, so a session is changed only while holding its
lock (`hold`, an exclusive `flock` on `.<session>.lock`): whoever holds it reads the
log, decides and appends, and no other replica can append the same turn meanwhile. A
line cut short by a crash or a full disk is the last one; reading leaves it out (with a
warning: the turn it held had not been answered) and the next append cuts it off before
writing, so a torn line never glues itself to the next turn. An append that finds the
disk full leaves the log as it was and raises `TurnLogFull`.

The log grows with the conversation (about 0.5 MB per turn at 640x480 with two key
frames) and lives until `forget` (the conversation is over) or `prune` (no turn for a
while: the engine service prunes sessions idle for `--log-keep-hours`) removes it. Both
touch only the files the log writes (`*.turns.jsonl` and their locks), so the folder
may hold other things.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote

from stream.frames import Turn
from stream.serving.wire import MAX_ID, NotATurn, turn_from_json, turn_to_json

log = logging.getLogger(__name__)
SUFFIX = ".turns.jsonl"
LONGEST_NAME = 200
"""Characters of a file name stem (file names have at most 255 bytes)."""
_CHUNK = 1 << 16


class TurnLogError(RuntimeError):
    pass


class TurnLogFull(TurnLogError):
    """No room on the log's disk: the turn was not kept (nor answered)."""


def check_session(session: str) -> None:
    """A session id the log can keep; ValueError says why not."""
    if not isinstance(session, str) or not 0 < len(session) <= MAX_ID:
        raise ValueError(f"a session id has 1 to {MAX_ID} characters")
    if not session.isprintable():
        raise ValueError("a session id has no control characters")


def _name(session: str) -> str:
    """The session's file name stem: its id %-quoted, or, where that would be too long
    for a file name (a long or non-ASCII id, a token's scope before it), its start and a
    digest of the whole."""
    quoted = quote(session, safe="")
    if len(quoted) <= LONGEST_NAME:
        return quoted
    digest = hashlib.sha256(session.encode()).hexdigest()[:32]
    return f"{quoted[:LONGEST_NAME - 40]}~{digest}"


class TurnLog:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TurnLogError(f"{folder}: cannot keep the turn log there ({e.strerror})"
                               ) from None

    def _path(self, session: str) -> Path:
        return self.folder / f"{_name(session)}{SUFFIX}"

    def _lock(self, session: str) -> Path:
        return self.folder / f".{_name(session)}.lock"

    def sessions(self) -> list[str]:
        """The sessions logged (a digested name stands for its session: see `_name`)."""
        return sorted(_session(p) for p in self.folder.glob(f"*{SUFFIX}"))

    def hold(self, session: str) -> contextlib.AbstractContextManager[None]:
        """The session's lock, across processes: read, decide and append while holding it.
        Not re-entrant."""
        return _held(self._lock(session))

    def _stem_lock(self, path: Path) -> Path:
        return self.folder / f".{path.name[:-len(SUFFIX)]}.lock"

    def append(self, session: str, turn: Turn) -> None:
        """The turn with the key frames it carries (give it only those the engine takes).
        Hold the session (`hold`) while deciding to append."""
        line = (json.dumps(turn_to_json(turn), allow_nan=False) + "\n").encode()
        path = self._path(session)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as e:
            raise _error(path, e) from None
        try:
            size = _cut_torn_tail(fd, path)
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError as e:
                os.ftruncate(fd, size)  # the log as it was: no torn line left behind
                raise _error(path, e) from None
        finally:
            os.close(fd)

    def turns(self, session: str) -> list[Turn]:
        """The session's turns in order; [] for a session never logged."""
        path = self._path(session)
        if not path.is_file():
            return []
        *lines, tail = path.read_bytes().split(b"\n")
        if tail:  # no newline: cut short while being written (even if it parses)
            log.warning("%s:%d: a turn cut short, left out", path, len(lines) + 1)
        turns = []
        for number, text in enumerate(lines, 1):
            if not text:
                continue
            try:
                turns.append(turn_from_json(text))
            except NotATurn as e:
                raise TurnLogError(f"{path}:{number}: not a logged turn ({e})") from None
        return turns

    def size(self, session: str) -> int:
        """Bytes logged for the session (0: none)."""
        return self.version(session)[1]

    def version(self, session: str) -> tuple[int, int, int]:
        """The log's file, size and time of change: changes whenever anyone appends to it,
        or forgets it and starts it again (even with as many bytes, on a reused inode)."""
        try:
            stat = self._path(session).stat()
        except FileNotFoundError:
            return 0, 0, 0
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    def listed(self, session: str) -> str:
        """The session as `sessions` and `prune` name it (a digest for a long id)."""
        return _session(self._path(session))

    def count(self, prefix: str = "") -> int:
        """Sessions logged whose id starts with `prefix` (a token's scope)."""
        start = quote(prefix, safe="")
        return sum(1 for p in self.folder.glob(f"{glob.escape(start)}*{SUFFIX}")
                   if p.is_file())

    def forget(self, session: str) -> None:
        """The session's log and lock go (the lock while held: see `hold`)."""
        with self.hold(session):
            self._path(session).unlink(missing_ok=True)
            self._lock(session).unlink(missing_ok=True)

    def prune(self, idle_s: float) -> list[str]:
        """Remove the logs of sessions no turn was appended to for `idle_s` seconds; their
        ids. Such a conversation, if it ever comes back, starts afresh."""
        until = time.time() - idle_s
        gone = []
        for path in self.folder.glob(f"*{SUFFIX}"):
            if not path.is_file():  # not the log's: a folder someone named so
                continue
            session = _session(path)
            lock = self._stem_lock(path)
            with _held(lock):
                try:
                    if path.stat().st_mtime >= until:
                        continue
                    path.unlink()
                except OSError:  # another replica pruned it first, or it is not ours
                    continue
                lock.unlink(missing_ok=True)
            gone.append(session)
        # Locks of sessions whose first turn never made it into a log.
        for lock in self.folder.glob(".*.lock"):
            log_path = self.folder / f"{lock.name[1:-len('.lock')]}{SUFFIX}"
            with contextlib.suppress(OSError):
                if lock.stat().st_mtime < until and not log_path.exists():
                    with _held(lock):
                        if not log_path.exists():
                            lock.unlink(missing_ok=True)
        return sorted(gone)


@contextlib.contextmanager
def _held(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` (created if missing)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise _error(path, e) from None
        fcntl.flock(fd, fcntl.LOCK_EX)
        # Whoever held it may have removed the file (forget, prune) while this one waited:
        # a lock on a file no longer there guards nothing, so it is taken again.
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)  # releases the lock


def _session(path: Path) -> str:
    return unquote(path.name[:-len(SUFFIX)])


def _error(path: Path, e: OSError) -> TurnLogError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return TurnLogFull(f"{path}: the turn log's disk is full; free space there "
                           "(or prune old sessions) and send the turn again")
    return TurnLogError(f"{path}: {e.strerror or e}")


def _cut_torn_tail(fd: int, path: Path) -> int:
    """Cut a last line without its newline (a write cut short) off the file; its size."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    end = size
    while end > 0:
        begin = max(0, end - _CHUNK)
        newline = os.pread(fd, end - begin, begin).rfind(b"\n")
        if newline >= 0:
            end = begin + newline + 1
            break
        end = begin
    log.warning("%s: a turn cut short (%d bytes) is cut off before the next", path,
                size - end)
    os.ftruncate(fd, end)
    return end
