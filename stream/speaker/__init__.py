"""Speaking cues and active-speaker localization."""
