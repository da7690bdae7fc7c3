"""Errors a user can act on. The CLI prints the message as one line and exits 1."""


class GantryError(RuntimeError):
    """Bad input (missing file, corrupt data, unreachable server): the message says what."""
