"""Sinks: where events leave the pipeline."""
