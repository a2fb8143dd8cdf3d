"""Input errors of the TIPO core: the one kind of failure that is the client's to fix.

The serving layer answers an `InputError` with a 4xx naming `field`; any other exception out of the core
is a bug, logged and answered with a generic 500 (service/api/errors.py has the table).
"""

from __future__ import annotations


class InputError(Exception):
    """A request the core cannot use. `field` names the request field to fix (None: the request as a whole)."""

    field: str | None = None

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        if field is not None:
            self.field = field
