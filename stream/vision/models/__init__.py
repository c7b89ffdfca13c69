"""BlazeFace models from the mediapipe 0.10.21 wheel (Apache-2.0; see LICENSE-mediapipe)."""
