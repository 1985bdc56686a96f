"""The project's own exceptions: every bad input ends in one of these, naming the field and value."""


class SpecMDError(ValueError):
    """Bad settings or input. A ValueError, so callers that catch ValueError keep working."""


class TraceFormatError(SpecMDError):
    """A trace file that is not a valid specmd trace (truncated, foreign, corrupt or inconsistent)."""
