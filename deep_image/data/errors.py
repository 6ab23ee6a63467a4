"""The data layer's error type."""


class DataError(ValueError):
    """A dataset that cannot be read: the message says what is missing and how to prepare it."""
