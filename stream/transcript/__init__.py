"""Transcripts: sidecar readers (SRT, WebVTT, JSONL)."""
