"""The one error type of design-space exploration: bad input or an unusable environment."""

from __future__ import annotations

__all__ = ["ExploreError"]


class ExploreError(Exception):
    """A problem the user can fix (the message says what); nothing was written to the storage."""
