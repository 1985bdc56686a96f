"""The project's own exceptions: every bad input ends in one of these, naming the field and value."""

from gymnasium.error import InvalidAction


class SpecMDError(ValueError):
    """Bad settings or input. A ValueError, so callers that catch ValueError keep working."""


class TraceFormatError(SpecMDError):
    """A trace file that is not a valid specmd trace (truncated, foreign, corrupt or inconsistent)."""


class InvalidActionError(SpecMDError, InvalidAction):
    """An action outside an environment's action space: a SpecMDError, and Gymnasium's own InvalidAction."""
