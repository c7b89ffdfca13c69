"""Sources: media files, pipes and URLs; transcript sidecars."""
