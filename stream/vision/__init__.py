"""Vision: face detection, tracking, players."""
