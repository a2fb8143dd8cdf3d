"""Error responses: one JSON shape for every endpoint, OpenAI style.

    {"error": {"message": "...", "type": "invalid_request_error", "param": "tag_length", "code": null}}

Status codes (README "Errors"):
  400 body not readable (not UTF-8); on the OpenAI-style endpoints every invalid input (OpenAI's
      semantics: `code` says what kind) · 401 missing/wrong API key · 405 wrong method · 413 body too large
  422 invalid input: validation, an invalid ban regex, a prompt longer than the model's context, or
      an input the `kgen` profile refuses because the reference crashes on it (type `reference_failure`)
  404 unknown route, or on the OpenAI-style endpoints an unknown `model` (`code: model_not_found`)
  424 scripted engine has no recorded completion for a prompt (a replay miss, not the client's fault
      and not an outage: type `scripted_prompt_missing`, the message names the prompt)
  429 wait queue full (Retry-After) · 503 not ready, engine failed, or queue wait too long
  504 request timeout (its engine work is aborted)
Which failure gets which answer is one table, `ERROR_RULES` (`api_error_for`): input errors of the TIPO
core (`InputError`, naming their field), refusals of admission, timeouts, engine failures. Anything not in
it is a bug: logged with its traceback and answered with a generic 500 (never its message, never a 4xx).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.admission import AdmissionError, QueueFull
from service.engine.base import EngineError, InvalidPromptError, PromptTooLongError, UnknownPromptError
from service.tipo.errors import InputError
from service.tipo.profile import ReferenceFailure

logger = logging.getLogger("service.api")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


ERROR_MEANINGS = {
    400: "The body could not be read (not UTF-8, or a chunked upload past max_body_bytes); on the OpenAI-style "
         "endpoints: any invalid input (names the field and the fix).",
    401: "Missing or invalid API key.",
    404: "Unknown model (code model_not_found).",
    413: "Request body too large.",
    422: "Invalid input (names the field and the fix).",
    424: "Scripted engine: no recorded completion for a prompt.",
    429: "Busy: every slot taken and the wait queue full; retry after Retry-After seconds.",
    503: "Not ready (starting, shutting down), the engine failed or stalled, or the queue wait was too long.",
    504: "The request took longer than its timeout; its engine work was aborted.",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI `responses` entries for these error statuses (one shared error schema)."""
    responses: dict[int | str, dict] = {}
    for status in statuses:
        responses[status] = {"model": ErrorBody, "description": ERROR_MEANINGS[status]}
        if status in (429, 503):
            responses[status]["headers"] = _RETRY_AFTER
    return responses


GENERATION_ERRORS = error_responses(400, 401, 413, 422, 424, 429, 503, 504)
# The OpenAI-style endpoints answer invalid input with 400, as OpenAI does, and an unknown model with 404.
OPENAI_ERRORS = error_responses(400, 401, 404, 413, 424, 429, 503, 504)


class ApiError(Exception):
    """An error answer: raise it anywhere below a route; the handler turns it into JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


class ClientGone(Exception):
    """The client closed the connection before the answer was complete."""


class RequestTimeout(Exception):
    """The request's deadline passed."""


class ServerStopping(Exception):
    """The shutdown grace is over while the request still ran."""


@dataclass(frozen=True)
class ErrorRule:
    status: int
    type: str = "invalid_request_error"
    message: str = "{exc}"  # formatted with the exception
    param: str | None = None  # else the exception's `field`, if it has one
    code: str | None = None
    retry_after: bool = False  # Retry-After: the exception's retry_after_s, else 5 s


# Failure -> answer. The most specific class of an exception's MRO that is listed here decides.
ERROR_RULES: dict[type[BaseException], ErrorRule] = {
    InputError: ErrorRule(422),
    ReferenceFailure: ErrorRule(422, "reference_failure", "the reference (tipo-kgen 0.3.1) crashes on this input, so "
                                "profile 'kgen' refuses it: {exc}. Use profile 'fixed' to have it handled.",
                                code="reference_failure"),
    PromptTooLongError: ErrorRule(422, message="the prompt does not fit the model's context: {exc} (shorten the "
                                  "input or lower max_new_tokens)", code="context_length_exceeded"),
    InvalidPromptError: ErrorRule(422, message="invalid prompt: {exc}", param="prompt"),
    UnknownPromptError: ErrorRule(424, "scripted_prompt_missing", "replay miss: {exc}"),
    QueueFull: ErrorRule(429, "rate_limit_error", retry_after=True),
    AdmissionError: ErrorRule(503, "service_unavailable", retry_after=True),
    ServerStopping: ErrorRule(503, "service_unavailable", "the server is shutting down and the request did not "
                              "finish within the shutdown grace; retry (another replica answers)", retry_after=True),
    EngineError: ErrorRule(503, "engine_error", "the model engine failed: {exc}", retry_after=True),
    RequestTimeout: ErrorRule(504, "timeout_error", "the request took longer than its timeout; its model calls were "
                              "aborted (raise timeout_s, up to the server's request_timeout_s, or ask for less)"),
    # Nobody reads this answer; 499 (nginx's "client closed request") keeps it apart in metrics.
    ClientGone: ErrorRule(499, "client_closed_request", "client closed the request"),
}


def api_error_for(exc: BaseException) -> ApiError:
    """The answer to a failure (ERROR_RULES); a logged generic 500 for anything else."""
    if isinstance(exc, ApiError):
        return exc
    rule = next((ERROR_RULES[kind] for kind in type(exc).__mro__ if kind in ERROR_RULES), None)
    if rule is None:
        logger.error("unexpected error (answered 500)", exc_info=exc)
        return ApiError(500, "internal server error", type="server_error")
    headers = {"Retry-After": str(getattr(exc, "retry_after_s", 5))} if rule.retry_after else None
    return ApiError(rule.status, rule.message.format(exc=exc), type=rule.type,
                    param=rule.param or getattr(exc, "field", None), code=rule.code, headers=headers)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    # Messages may quote user input; a lone surrogate in it would make the JSON answer unencodable.
    message = message.encode("utf-8", "replace").decode("utf-8")
    param = param.encode("utf-8", "replace").decode("utf-8") if param else param
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """Turn pydantic errors into one sentence that says what to fix, and the first bad field."""
    parts = []
    first_param = None
    seen_fields = set()
    for error in errors:
        # A union field reports one error per member, tagged with the member's type: say it once.
        loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path") and not _UNION_TAG.fullmatch(str(p))]
        field = ".".join(loc)
        if field and field in seen_fields:
            continue
        seen_fields.add(field)
        if error.get("type") == "json_invalid":
            parts.append(f"the request body is not valid JSON ({error.get('ctx', {}).get('error', 'parse error')})")
            continue
        if error.get("type") == "missing" and not field:
            parts.append("the request body is missing (send a JSON object)")
            continue
        first_param = first_param or field or None
        msg = error.get("msg", "invalid value").removeprefix("Value error, ")
        if error.get("type") in ("missing", "extra_forbidden"):
            parts.append(f"{field}: {msg}")
        else:
            parts.append(f"{field or 'body'}: {msg} (got {_short_repr(error.get('input'))})")
    return "Invalid request: " + "; ".join(parts), first_param


# The OpenAI-style endpoints answer invalid input as OpenAI does: 400 with a code.
OPENAI_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})


def validation_code(errors: list[dict]) -> str:
    kinds = {error.get("type") for error in errors}
    if "json_invalid" in kinds:
        return "invalid_json"
    if "missing" in kinds:
        return "missing_required_parameter"
    return "invalid_value"


_UNION_TAG = re.compile(r"str|int|float|bool|none|[\w-]+\[.*\]")  # pydantic's tags of union members


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        message, param = validation_message(errors)
        if request.url.path in OPENAI_PATHS:  # OpenAI's SDKs raise BadRequestError on 400, not on 422
            return JSONResponse(error_body(message, "invalid_request_error", param, validation_code(errors)),
                                status_code=400)
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    async def _by_rule(_: Request, exc: Exception) -> JSONResponse:
        error = api_error_for(exc)
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    for kind in ERROR_RULES:  # e.g. an InputError raised while a request is read
        app.add_exception_handler(kind, _by_rule)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)
