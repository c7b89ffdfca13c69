"""Audio stages: voice activity."""
