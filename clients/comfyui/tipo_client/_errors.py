"""The one exception the client raises."""

from __future__ import annotations

from typing import Any, Optional


class TipoServiceError(Exception):
    """A call to the TIPO service failed.

    * an error answer: `status` is the HTTP status, `message`, `type`, `param`, `code` come from the service's
      JSON body `{"error": {...}}`; `retry_after` is its Retry-After header in seconds, if any;
    * the service could not be reached or did not answer in time: `status` is None, `type` is
      `connection_error` or `timeout`;
    * one item of a batch failed: `status` is None, `item` is its position in the answer (`index` / `variant`
      name the request), the rest comes from the item's `error`.

    `str(error)` is one line meant for users: what failed and the service's own words.
    """

    def __init__(self, message: str, *, status: Optional[int] = None, type: Optional[str] = None,
                 param: Optional[str] = None, code: Optional[str] = None, retry_after: Optional[float] = None,
                 url: str = "", body: Any = None, item: Optional[int] = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code
        self.retry_after = retry_after
        self.url = url
        self.body = body
        self.item = item

    @property
    def retryable(self) -> bool:
        """Busy or not ready (429 / 503) or unreachable: the same call may succeed later."""
        return self.status in (429, 503) or self.type == "connection_error"

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else (self.type or "error")
        if self.status is not None and self.type:
            where += f" {self.type}"
        if self.param:
            where += f", field {self.param!r}"
        text = f"TIPO service ({where}): {self.message}"
        if self.retry_after is not None and self.status in (429, 503):
            text += f" (the service asks to retry after {self.retry_after:g} s)"
        return text

    def __repr__(self) -> str:
        return f"TipoServiceError(status={self.status!r}, type={self.type!r}, message={self.message!r})"


# Its public name, also in the frontends' vendored copies: hosts print errors as `module.Class: message`
# (ComfyUI would otherwise show the node folder's path).
TipoServiceError.__module__ = "tipo_client"
