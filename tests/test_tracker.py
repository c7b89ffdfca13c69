"""Face tracks and players from hand-made detections."""

from __future__ import annotations

from stream.vision.faces import Face
from stream.vision.players import PlayerRegistry
from stream.vision.tracker import FaceTracker, TrackerConfig

KEYPOINTS = ((0.0, 0.0),) * 6


def face(x: float, y: float = 100.0, size: float = 60.0) -> Face:
    return Face((x - size / 2, y - size / 2, x + size / 2, y + size / 2), 0.9, KEYPOINTS)


def ids_by_x(tracks) -> list[int]:
    return [t.id for t in sorted(tracks, key=lambda t: t.centre[0])]


def test_identities_survive_a_crossing() -> None:
    tracker = FaceTracker(TrackerConfig(min_hits=2))
    # Two faces walk towards each other, overlap, and come out on the other side.
    xs = [(100 + 10 * k, 400 - 10 * k) for k in range(31)]
    first = None
    for k, (a, b) in enumerate(xs):
        faces = [face(a, 100), face(b, 110)]
        if 14 <= k <= 16:  # while overlapping, the detector sees only one of them
            faces = [face(a, 100)]
        tracks = tracker.update(faces)
        if k == 2:
            first = {round(t.centre[0]): t.id for t in tracks}
    assert first is not None
    left_id, right_id = first[120], first[380]
    final = {round(t.centre[0]): t.id for t in tracks}
    assert final[400] == left_id and final[100] == right_id, "each kept its id across"


def test_a_ten_frame_miss_keeps_the_track() -> None:
    tracker = FaceTracker(TrackerConfig(max_misses=15))
    for _ in range(5):
        before = tracker.update([face(200)])
    for _ in range(10):
        during = tracker.update([])
    assert len(during) == 1 and during[0].id == before[0].id and during[0].face is None
    after = tracker.update([face(204)])
    assert [t.id for t in after] == [before[0].id]


def test_tracks_are_born_after_min_hits_and_die_after_max_misses() -> None:
    tracker = FaceTracker(TrackerConfig(min_hits=3, max_misses=2))
    assert tracker.update([face(100)]) == []
    assert tracker.update([face(101)]) == []
    assert len(tracker.update([face(102)])) == 1
    for _ in range(2):
        assert len(tracker.update([])) == 1
    assert tracker.update([]) == []
    assert tracker.update([face(500)]) == [], "a single false detection is no track"


def test_far_apart_faces_are_never_swapped() -> None:
    tracker = FaceTracker(TrackerConfig(min_hits=1))
    tracks = tracker.update([face(100), face(500)])
    a, b = ids_by_x(tracks)
    for step in range(1, 20):
        tracks = tracker.update([face(100 + step), face(500 - step)])
    assert ids_by_x(tracks) == [a, b]


def test_players_left_to_right_and_back_after_turning_away() -> None:
    tracker = FaceTracker(TrackerConfig(min_hits=1, max_misses=3))
    players = PlayerRegistry({"P2": "Ben"})
    seen = players.assign(tracker.update([face(500), face(100), face(300)]))
    by_x = {round(t.centre[0]): seen[t.id] for t in tracker.confirmed()}
    assert by_x == {100: "P1", 300: "P2", 500: "P3"}
    assert players.name("P2") == "Ben" and players.name(None) is None
    for _ in range(5):  # P3 turns away long enough for the track to end
        players.assign(tracker.update([face(100), face(300)]))
    back = players.assign(tracker.update([face(100), face(300), face(505)]))
    newcomer = next(t for t in tracker.confirmed() if t.centre[0] > 450)
    assert back[newcomer.id] == "P3", "the same seat, the same player"
    late = players.assign(tracker.update([face(100), face(300), face(505), face(620)]))
    assert sorted(late.values()) == ["P1", "P2", "P3", "P4"]


def test_unseen_time_counts_frames_when_detection_skips_frames() -> None:
    import numpy as np

    from stream.frames import VideoFrame
    from stream.speaker.perception import Perception, PerceptionConfig

    config = PerceptionConfig(faces={"detect_every": 2}, tracker={"max_misses": 15})
    shown = 20  # the face is there for 20 frames, then gone

    def detect(image: np.ndarray) -> list[Face]:
        return [face(200)] if int(image[0, 0, 0]) < shown else []

    perception = Perception(config, detect)
    seen = []
    for k in range(60):
        image = np.full((240, 320, 3), min(k, 255), dtype=np.uint8)
        frame, = perception.frame(VideoFrame(pts=k / 30, image=image))
        seen.append(bool(frame.players))
    last = max(k for k, present in enumerate(seen) if present)
    # Last detected at frame 18; 15 frames unseen later it is dropped (at the detection
    # pass of frame 34), not 15 detection passes (30 frames) later.
    assert last == 33


def test_a_moving_face_is_followed_across_skipped_frames() -> None:
    tracker = FaceTracker(TrackerConfig(max_jump=0.5))
    # 20 px per frame, detected every third frame: 60 px between updates, one face size.
    for k in range(0, 30, 3):
        tracks = tracker.update([face(100 + 20 * k)], frames=3)
    assert len(tracks) == 1 and tracks[0].id == 1
    # Per frame, not per update (which would be 60): 9 hits of exponential smoothing.
    assert abs(tracks[0].velocity[0] - 20 * (1 - 0.5 ** 9)) < 1e-9
