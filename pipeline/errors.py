"""The errors a user can cause. The CLI prints them as one line and exits non-zero."""


class PipelineError(Exception):
    """A user-facing problem: the message says what was expected, what was found, how to fix it."""


class ConfigError(PipelineError):
    """The config file or a --set override is invalid."""


class InputError(PipelineError):
    """An input file or folder cannot be read as articles, paragraphs or labels."""


class RunDirError(PipelineError):
    """A run directory is missing, incomplete or corrupted."""
