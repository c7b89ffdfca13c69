"""Errors a user can act on: the CLI prints their message as one line and exits non-zero."""


class UserError(Exception):
    """Bad input or configuration; the message names the input and what to do."""


class MediaError(UserError):
    """Media that cannot be opened or decoded."""


class ConfigError(UserError):
    """A config file or flag that does not validate."""


class TranscriptError(UserError):
    """A transcript that cannot be used at all (single bad lines are skipped instead)."""


class ModelError(UserError):
    """A model that is not on disk, not supported, or does not fit."""
