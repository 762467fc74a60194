"""Errors of the user-facing layer; `SwarmError` is the root of this package's errors."""


class SwarmError(Exception):
    """Root of the errors raised by the `swarm` package."""


class GenerationError(SwarmError):
    """The request cannot be generated (bad arguments, or a session too short)."""


class ModelPreparationError(SwarmError):
    """The default model could not be found or converted."""
