"""The flow's one error type (its own module: every other flow module raises it)."""

__all__ = ["SynthError"]


class SynthError(RuntimeError):
    """The flow could not run (missing tool, tool crash); the message says which and why."""
