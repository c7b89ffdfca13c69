"""The turn log after a crash, a full disk and beside other files."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from stream.serving.turnlog import TurnLog, TurnLogError, TurnLogFull
from tests.tiny import scene_turn

LINES = ["Ben, did you finish the map for our trip?", "He did most of it, honestly.",
         "Then show me the shortcut, please."]


def test_a_turn_cut_short_by_a_crash_is_left_out_and_cut_off_before_the_next(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SIGKILL mid-append leaves a line without its end. Reading leaves it out; the next
    append (the same turn, sent again) cuts it off first instead of writing on after it,
    which made every later read of the session an error."""
    log = TurnLog(tmp_path)
    log.append("a", scene_turn(0, "P1", LINES[0]))
    log.append("a", scene_turn(1, "P2", LINES[1]))
    path = tmp_path / "a.turns.jsonl"
    whole = path.read_text()
    path.write_text(whole[:-40])  # the second line lost its end
    assert [t.text for t in log.turns("a")] == [LINES[0]]
    assert "a turn cut short, left out" in caplog.text
    log.append("a", scene_turn(1, "P2", LINES[1]))
    log.append("a", scene_turn(2, "P3", LINES[2]))
    assert [t.text for t in log.turns("a")] == LINES
    assert "cut off before the next" in caplog.text
    path.write_text("{broken\n" + whole)  # damage that is not a cut-short last line
    with pytest.raises(TurnLogError, match=r"a.turns.jsonl:1: not a logged turn"):
        log.turns("a")
    assert log.turns("never") == []


def test_a_full_disk_leaves_the_log_as_it_was_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills halfway through a line: the append fails as `TurnLogFull` (the
    service answers 507) and the half line is gone, so the turn can be sent again."""
    log = TurnLog(tmp_path)
    log.append("a", scene_turn(0, "P1", LINES[0]))
    before = (tmp_path / "a.turns.jsonl").read_bytes()
    write = os.write

    def full(fd: int, data: bytes | memoryview) -> int:
        if len(data) > 1000:
            return write(fd, bytes(data[:len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(TurnLogFull, match="disk is full; free space"):
        log.append("a", scene_turn(1, "P2", LINES[1]))
    monkeypatch.undo()
    assert (tmp_path / "a.turns.jsonl").read_bytes() == before
    log.append("a", scene_turn(1, "P2", LINES[1]))
    assert [t.text for t in log.turns("a")] == LINES[:2]


def test_pruning_removes_only_what_the_log_wrote(tmp_path: Path) -> None:
    """A replay's events file in the same folder, however old, stays."""
    log = TurnLog(tmp_path)
    log.append("old", scene_turn(0, "P1", LINES[0]))
    log.append("new", scene_turn(0, "P1", LINES[0]))
    (tmp_path / "events.jsonl").write_text('{"schema": "socialstream.turn/6"}\n')
    hour_ago = time.time() - 3601
    for name in ("old.turns.jsonl", "events.jsonl"):
        os.utime(tmp_path / name, (hour_ago, hour_ago))
    assert log.prune(3600) == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".new.lock", "events.jsonl", "new.turns.jsonl"]
    assert log.sessions() == ["new"]


def test_a_last_line_without_its_newline_is_left_out_even_if_it_parses(
        tmp_path: Path) -> None:
    """A write cut just before its newline: the turn was not answered, and the next append
    cuts it off; read as taken, the session in memory held a turn the log then lost."""
    log = TurnLog(tmp_path)
    log.append("a", scene_turn(0, "P1", LINES[0]))
    log.append("a", scene_turn(1, "P2", LINES[1]))
    path = tmp_path / "a.turns.jsonl"
    path.write_bytes(path.read_bytes()[:-1])
    assert [t.index for t in log.turns("a")] == [0]
    log.append("a", scene_turn(1, "P2", LINES[1]))
    assert [t.index for t in log.turns("a")] == [0, 1]


def test_a_lock_removed_while_waited_for_is_taken_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One replica forgets a session while another waits for its lock: the waiter must
    not end up holding the removed file while a newcomer holds a new one (two holders of
    one session at once)."""
    import fcntl

    from stream.serving import turnlog

    log = TurnLog(tmp_path)
    log.append("s", scene_turn(0, "P1", LINES[0]))
    real, calls = fcntl.flock, []

    def flock(fd: int, operation: int) -> None:
        calls.append(fd)
        if len(calls) == 1:  # the waiter opened the lock file; meanwhile it is forgotten
            TurnLog(tmp_path).forget("s")
        real(fd, operation)

    monkeypatch.setattr(turnlog.fcntl, "flock", flock)
    with log.hold("s"):
        monkeypatch.undo()
        newcomer = os.open(tmp_path / ".s.lock", os.O_RDWR | os.O_CREAT)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(newcomer, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(newcomer)


@pytest.mark.parametrize("session", ["é" * 128, "%" * 128, "a" * 128])
def test_a_long_or_non_ascii_session_id_is_kept_under_a_digest(tmp_path: Path,
                                                                session: str) -> None:
    """Quoted, such ids (with a token's scope before them) were longer than a file name
    may be: a 500 ("File name too long")."""
    log = TurnLog(tmp_path)
    scoped = "0123456789abcdef." + session
    log.append(scoped, scene_turn(0, "P1", LINES[0]))
    log.append("0123456789abcdef." + session[:-1], scene_turn(0, "P2", LINES[1]))
    assert [t.text for t in log.turns(scoped)] == [LINES[0]]
    assert all(len(p.name.encode()) <= 255 for p in tmp_path.iterdir())
