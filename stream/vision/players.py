"""Players: stable ids ("P1", "P2", ...) for the people behind face tracks.

Ids are handed out left to right among the faces of the first frame with
confirmed tracks, then in order of appearance. A track that ends and a new one
that starts near where a player was last seen (someone who turned away and
back) get that player's id again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stream.frames import Box
from stream.vision.tracker import Track

REENTRY_SIZES = 1.5
"""How far (in face sizes) from a lost player's last box a new track may appear and be them."""


@dataclass
class _Seen:
    box: Box
    track: int | None


class PlayerRegistry:
    def __init__(self, names: dict[str, str] | None = None) -> None:
        self.names = dict(names or {})
        self._players: dict[str, _Seen] = {}
        self._by_track: dict[int, str] = {}

    def assign(self, tracks: list[Track]) -> dict[int, str]:
        """Player id for each confirmed track of this frame."""
        live = {t.id for t in tracks}
        for player, seen in self._players.items():
            if seen.track is not None and seen.track not in live:
                self._by_track.pop(seen.track, None)
                self._players[player] = _Seen(seen.box, None)
        for track in sorted((t for t in tracks if t.id not in self._by_track),
                            key=lambda t: t.centre[0]):
            player = self._returning(track) or f"P{len(self._players) + 1}"
            self._by_track[track.id] = player
            self._players[player] = _Seen(track.box, track.id)
        for track in tracks:
            self._players[self._by_track[track.id]] = _Seen(track.box, track.id)
        return {t.id: self._by_track[t.id] for t in tracks}

    def _returning(self, track: Track) -> str | None:
        best, best_distance = None, REENTRY_SIZES * track.size
        for player, seen in self._players.items():
            if seen.track is not None:
                continue
            centre = np.array([(seen.box[0] + seen.box[2]) / 2, (seen.box[1] + seen.box[3]) / 2])
            distance = float(np.linalg.norm(centre - track.centre))
            if distance < best_distance:
                best, best_distance = player, distance
        return best

    def name(self, player: str | None) -> str | None:
        return self.names.get(player) if player is not None else None
