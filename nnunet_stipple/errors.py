"""Errors raised for bad user input. Each message names the file involved and what to do about it."""


class StippleInputError(ValueError):
    """Bad input from the user: a missing or inconsistent file, an impossible option value."""
