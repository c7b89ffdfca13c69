"""An on-disk, bounded, ordered queue of messages waiting for the broker.

Events are written here first and deleted only once the broker has
acknowledged them, so a broker that is down at start, or goes away mid-run,
loses nothing; what is still here at exit is delivered by the next run of the
same session. SQLite (WAL) keeps each append atomic across crashes.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from stream.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Spooled:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Spool:
    def __init__(self, path: Path, max_messages: int = 100_000) -> None:
        self.path, self.max_messages = path, max_messages
        self.dropped = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY "
                             "AUTOINCREMENT, topic TEXT, payload BLOB, qos INTEGER, "
                             "retain INTEGER)")
        except (OSError, sqlite3.Error) as exc:
            raise UserError(f"{path}: cannot open the MQTT spool ({exc}); set mqtt.spool_dir "
                            "to a writable folder") from exc

    def append(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Queue a message; returns its id (what `peek` reports and `ack` takes)."""
        row = self._db.execute("INSERT INTO spool (topic, payload, qos, retain) "
                               "VALUES (?, ?, ?, ?)", (topic, payload, qos, int(retain)))
        excess = len(self) - self.max_messages
        if excess > 0:
            self._db.execute("DELETE FROM spool WHERE id IN "
                             "(SELECT id FROM spool ORDER BY id LIMIT ?)", (excess,))
            if self.dropped == 0:
                log.warning("MQTT spool %s is full (%d messages): dropping the oldest",
                            self.path, self.max_messages)
            self.dropped += excess
        return int(row.lastrowid)

    def peek(self, limit: int = 100) -> list[Spooled]:
        rows = self._db.execute("SELECT id, topic, payload, qos, retain FROM spool ORDER BY id "
                                "LIMIT ?", (limit,)).fetchall()
        return [Spooled(i, t, bytes(p), q, bool(r)) for i, t, p, q, r in rows]

    def ack(self, message_id: int) -> None:
        self._db.execute("DELETE FROM spool WHERE id = ?", (message_id,))

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM spool").fetchone()[0])

    def close(self) -> None:
        self._db.close()
