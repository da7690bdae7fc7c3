"""Errors a user can act on. The CLI prints the message as one line and exits 1."""


class GantryError(RuntimeError):
    """Bad input (missing file, corrupt data, unreachable server): the message says what."""


class HealthStopped(GantryError):
    """The health monitor ended the run (divergence it could not roll back): a verdict on the
    run's settings, not a fault of the machine, so a sweep records it instead of retrying."""
