"""Sync and async clients of the tipo-service HTTP API (httpx).

Both send the same requests and read the same answers (`_Calls`); they differ only in how they wait.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import httpx

from ._errors import TipoServiceError
from .models import (
    ModelList,
    ProbeAnswer,
    TipoAddonOutput,
    TipoBatchResponse,
    TipoFormatResponse,
    TipoRequestBody,
    TipoResponse,
)

__version__ = "0.1.0"

DEFAULT_URL = "http://127.0.0.1:8000"
ENV_URL = "TIPO_SERVICE_URL"
ENV_API_KEY = "TIPO_SERVICE_API_KEY"
RETRY_STATUSES = (429, 503)
PROBE_TIMEOUT_S = 10.0
# An idle connection is dropped before the service drops it (its keep_alive_s, 5 s by default): a POST sent
# on a connection the server is closing at that moment is lost (a transport error, never retried).
KEEPALIVE_EXPIRY_S = 2.0


def default_limits() -> httpx.Limits:
    return httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=KEEPALIVE_EXPIRY_S)

OnRetry = Callable[[TipoServiceError, float, int], None]  # (the error, seconds to wait, retry number from 1)


@dataclass(frozen=True)
class RetryPolicy:
    """When a call is tried again: answers 429 (busy) and 503 (not ready, overloaded), and connections that
    could not be opened (the request never reached the service).

    The wait is the answer's Retry-After, else `backoff_s` doubling up to `max_backoff_s`. A call gives up,
    raising the last error, after `max_retries` retries or when the next wait would bring the total time
    spent waiting past `max_wait_s` (a Retry-After longer than what is left is not cut short).
    """

    max_retries: int = 4
    max_wait_s: float = 60.0
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def wait_before(self, retry: int, error: TipoServiceError, waited_s: float) -> Optional[float]:
        """Seconds to wait before retry number `retry` (from 1), or None to give up."""
        if not error.retryable or retry > self.max_retries:
            return None
        wait = error.retry_after if error.retry_after is not None else min(
            self.backoff_s * 2 ** (retry - 1), self.max_backoff_s)
        wait = max(0.0, wait)
        if waited_s + wait > self.max_wait_s:
            return None
        return wait


NO_RETRY = RetryPolicy(max_retries=0)


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Retry-After as seconds: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_response(response: httpx.Response) -> TipoServiceError:
    """The service's error answer `{"error": {message, type, param, code}}` (or any other body) as an exception."""
    url = str(response.request.url) if response.request is not None else ""
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict) and isinstance(detail.get("message"), str):
        message, kind, param, code = detail["message"], detail.get("type"), detail.get("param"), detail.get("code")
    elif isinstance(body, dict) and "detail" in body:  # not the service's shape (a proxy, another app)
        message, kind, param, code = str(body["detail"]), None, None, None
    else:
        text = response.text.strip()
        message = text[:500] if text else (response.reason_phrase or "no body")
        kind = param = code = None
    return TipoServiceError(message, status=response.status_code, type=kind, param=param, code=code,
                            retry_after=parse_retry_after(response.headers.get("retry-after")), url=url, body=body)


def error_from_transport(exc: httpx.HTTPError, url: str, timeout: Optional[float]) -> TipoServiceError:
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return TipoServiceError(f"cannot connect to the TIPO service at {url}: {exc or type(exc).__name__}",
                                type="connection_error", url=url)
    if isinstance(exc, httpx.TimeoutException):
        return TipoServiceError(f"no answer from {url} within {timeout:g} s (raise the timeout, or ask for less)"
                                if timeout else f"no answer from {url}: {type(exc).__name__}",
                                type="timeout", url=url)
    return TipoServiceError(f"the connection to {url} failed: {exc or type(exc).__name__}", type="transport_error",
                            url=url)


def batch_results(answer: TipoBatchResponse) -> List[TipoResponse]:
    """The results of a /v1/tipo/batch answer in request order (variants of a request together), or the first
    failed item as a TipoServiceError."""
    items = sorted(answer["data"], key=lambda item: (item["index"], item["variant"]))
    results = []
    for position, item in enumerate(items):
        error = item.get("error")
        if error or item.get("result") is None:
            error = error or {}
            raise TipoServiceError(f"requests[{item['index']}] (variant {item['variant']}): "
                                   f"{error.get('message', 'no result')}", type=error.get("type"),
                                   param=error.get("param"), code=error.get("code"), body=item, item=position)
        results.append(item["result"])
    return results


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    body: Optional[Dict[str, Any]] = None
    timeout: Optional[float] = None
    retry: bool = True
    accept_statuses: Tuple[int, ...] = ()  # answers with these statuses are results (the probes' 503)


class _Calls:
    """What the two clients share: configuration, request building, reading answers."""

    def __init__(self, base_url: Optional[str], api_key: Optional[str], timeout: float, retry: RetryPolicy,
                 headers: Optional[Mapping[str, str]]):
        self.base_url = (base_url or os.environ.get(ENV_URL) or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else (os.environ.get(ENV_API_KEY) or None)
        self.timeout = timeout
        self.retry = retry
        self.headers = {"User-Agent": f"tipo-client/{__version__}", "Accept": "application/json"}
        if self.api_key:
            self.headers["Authorization"] = f"Bearer {self.api_key}"
        self.headers.update(headers or {})

    def url(self, call: _Call) -> str:
        return self.base_url + call.path

    def timeout_of(self, call: _Call) -> float:
        return call.timeout if call.timeout is not None else self.timeout

    def result(self, call: _Call, response: httpx.Response) -> Any:
        if response.is_success or response.status_code in call.accept_statuses:
            try:
                return response.json()
            except ValueError:
                raise TipoServiceError(f"the answer of {self.url(call)} is not JSON: {response.text[:200]!r}",
                                       status=response.status_code, type="invalid_response",
                                       url=self.url(call)) from None
        raise error_from_response(response)

    # --- the API's calls

    @staticmethod
    def tipo(request: Optional[Mapping[str, Any]], fields: Mapping[str, Any], timeout: Optional[float]) -> _Call:
        return _Call("POST", "/v1/tipo", {**(request or {}), **fields}, timeout)

    @staticmethod
    def batch(requests: Sequence[Mapping[str, Any]], n: int, timeout_s: Optional[float],
              timeout: Optional[float]) -> _Call:
        body: Dict[str, Any] = {"requests": [dict(request) for request in requests], "n": n}
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
        return _Call("POST", "/v1/tipo/batch", body, timeout)

    @staticmethod
    def format(full_output: Mapping[str, Any], addon_output: Union[TipoAddonOutput, Mapping[str, Any]],
               format: Optional[str], profile: Optional[str], timeout: Optional[float]) -> _Call:
        body: Dict[str, Any] = {"full_output": dict(full_output), "addon_output": dict(addon_output)}
        if format is not None:
            body["format"] = format
        if profile is not None:
            body["profile"] = profile
        return _Call("POST", "/v1/tipo/format", body, timeout)

    @staticmethod
    def get(path: str, probe: bool = False) -> _Call:
        if probe:  # a probe reports its state: no retries, and 503 is an answer, not an error
            return _Call("GET", path, timeout=PROBE_TIMEOUT_S, retry=False, accept_statuses=(503,))
        return _Call("GET", path)


class TipoClient:
    """Blocking client.

        with TipoClient("http://127.0.0.1:8000", api_key="...") as client:
            answer = client.tipo(tags="1girl, solo", seed=1234)
            print(answer["prompt"])

    base_url / api_key default to the environment (TIPO_SERVICE_URL, TIPO_SERVICE_API_KEY), then to
    http://127.0.0.1:8000 and no key. `timeout` is one HTTP exchange's limit in seconds (per call: `timeout=`);
    the service's own limit is the body's `timeout_s`. Every failure raises TipoServiceError.
    """

    def __init__(self, base_url: Optional[str] = None, *, api_key: Optional[str] = None, timeout: float = 120.0,
                 retry: RetryPolicy = RetryPolicy(), headers: Optional[Mapping[str, str]] = None,
                 http_client: Optional[httpx.Client] = None, sleep: Callable[[float], None] = time.sleep,
                 on_retry: Optional[OnRetry] = None):
        self._calls = _Calls(base_url, api_key, timeout, retry, headers)
        self._http = http_client or httpx.Client(limits=default_limits())
        self._owns_http = http_client is None
        self._sleep = sleep
        self._on_retry = on_retry

    @property
    def base_url(self) -> str:
        return self._calls.base_url

    # --- endpoints

    def tipo(self, request: Optional[TipoRequestBody] = None, /, *, timeout: Optional[float] = None,
             **fields: Any) -> TipoResponse:
        """POST /v1/tipo: `request` (a TipoRequest dict) and/or its fields as keywords."""
        return self._send(self._calls.tipo(request, fields, timeout))

    def batch(self, requests: Sequence[TipoRequestBody], *, n: int = 1, timeout_s: Optional[float] = None,
              timeout: Optional[float] = None) -> TipoBatchResponse:
        """POST /v1/tipo/batch as it answers (items may carry an `error`); see `tipo_many`."""
        return self._send(self._calls.batch(requests, n, timeout_s, timeout))

    def tipo_many(self, requests: Sequence[TipoRequestBody], *, n: int = 1, timeout_s: Optional[float] = None,
                  timeout: Optional[float] = None) -> List[TipoResponse]:
        """Many requests in ONE /v1/tipo/batch call: the results in request order (n variants of each in turn);
        a failed item raises TipoServiceError."""
        return batch_results(self.batch(requests, n=n, timeout_s=timeout_s, timeout=timeout))

    def format(self, full_output: Mapping[str, Any], addon_output: Union[TipoAddonOutput, Mapping[str, Any]], *,
               format: Optional[str] = None, profile: Optional[str] = None,
               timeout: Optional[float] = None) -> TipoFormatResponse:
        """POST /v1/tipo/format: the four strings of a single operation's `operation_output` maps."""
        return self._send(self._calls.format(full_output, addon_output, format, profile, timeout))

    def models(self) -> ModelList:
        return self._send(self._calls.get("/v1/models"))

    def live(self) -> ProbeAnswer:
        """GET /health/live (no retries; a failing probe is an answer: look at `status`)."""
        return self._send(self._calls.get("/health/live", probe=True))

    def ready(self) -> ProbeAnswer:
        """GET /health/ready (no retries; `status` is `ready` or `not_ready`)."""
        return self._send(self._calls.get("/health/ready", probe=True))

    def wait_ready(self, timeout_s: float = 60.0, poll_s: float = 0.5) -> ProbeAnswer:
        """Poll /health/ready until it answers ready (TipoServiceError type `timeout` after `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                answer = self.ready()
                if answer.get("status") == "ready":
                    return answer
                why = answer.get("detail", "")
            except TipoServiceError as exc:
                if not exc.retryable:
                    raise
                why = exc.message
            if time.monotonic() + poll_s > deadline:
                raise TipoServiceError(f"the service at {self.base_url} was not ready within {timeout_s:g} s: {why}",
                                       type="timeout", url=self.base_url + "/health/ready")
            self._sleep(poll_s)

    # --- plumbing

    def _send(self, call: _Call) -> Any:
        calls, waited, retry = self._calls, 0.0, 0
        while True:
            try:
                timeout = calls.timeout_of(call)
                try:
                    response = self._http.request(call.method, calls.url(call), json=call.body,
                                                  headers=calls.headers, timeout=timeout)
                except httpx.HTTPError as exc:
                    raise error_from_transport(exc, calls.url(call), timeout) from None
                return calls.result(call, response)
            except TipoServiceError as error:
                retry += 1
                wait = calls.retry.wait_before(retry, error, waited) if call.retry else None
                if wait is None:
                    raise
                if self._on_retry is not None:
                    self._on_retry(error, wait, retry)
                self._sleep(wait)
                waited += wait

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> TipoClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncTipoClient:
    """The same API as TipoClient, awaitable (httpx.AsyncClient); `sleep` is an async callable."""

    def __init__(self, base_url: Optional[str] = None, *, api_key: Optional[str] = None, timeout: float = 120.0,
                 retry: RetryPolicy = RetryPolicy(), headers: Optional[Mapping[str, str]] = None,
                 http_client: Optional[httpx.AsyncClient] = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, on_retry: Optional[OnRetry] = None):
        self._calls = _Calls(base_url, api_key, timeout, retry, headers)
        self._http = http_client or httpx.AsyncClient(limits=default_limits())
        self._owns_http = http_client is None
        self._sleep = sleep
        self._on_retry = on_retry

    @property
    def base_url(self) -> str:
        return self._calls.base_url

    async def tipo(self, request: Optional[TipoRequestBody] = None, /, *, timeout: Optional[float] = None,
                   **fields: Any) -> TipoResponse:
        return await self._send(self._calls.tipo(request, fields, timeout))

    async def batch(self, requests: Sequence[TipoRequestBody], *, n: int = 1, timeout_s: Optional[float] = None,
                    timeout: Optional[float] = None) -> TipoBatchResponse:
        return await self._send(self._calls.batch(requests, n, timeout_s, timeout))

    async def tipo_many(self, requests: Sequence[TipoRequestBody], *, n: int = 1, timeout_s: Optional[float] = None,
                        timeout: Optional[float] = None) -> List[TipoResponse]:
        return batch_results(await self.batch(requests, n=n, timeout_s=timeout_s, timeout=timeout))

    async def format(self, full_output: Mapping[str, Any], addon_output: Union[TipoAddonOutput, Mapping[str, Any]],
                     *, format: Optional[str] = None, profile: Optional[str] = None,
                     timeout: Optional[float] = None) -> TipoFormatResponse:
        return await self._send(self._calls.format(full_output, addon_output, format, profile, timeout))

    async def models(self) -> ModelList:
        return await self._send(self._calls.get("/v1/models"))

    async def live(self) -> ProbeAnswer:
        return await self._send(self._calls.get("/health/live", probe=True))

    async def ready(self) -> ProbeAnswer:
        return await self._send(self._calls.get("/health/ready", probe=True))

    async def wait_ready(self, timeout_s: float = 60.0, poll_s: float = 0.5) -> ProbeAnswer:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                answer = await self.ready()
                if answer.get("status") == "ready":
                    return answer
                why = answer.get("detail", "")
            except TipoServiceError as exc:
                if not exc.retryable:
                    raise
                why = exc.message
            if time.monotonic() + poll_s > deadline:
                raise TipoServiceError(f"the service at {self.base_url} was not ready within {timeout_s:g} s: {why}",
                                       type="timeout", url=self.base_url + "/health/ready")
            await self._sleep(poll_s)

    async def _send(self, call: _Call) -> Any:
        calls, waited, retry = self._calls, 0.0, 0
        while True:
            try:
                timeout = calls.timeout_of(call)
                try:
                    response = await self._http.request(call.method, calls.url(call), json=call.body,
                                                        headers=calls.headers, timeout=timeout)
                except httpx.HTTPError as exc:
                    raise error_from_transport(exc, calls.url(call), timeout) from None
                return calls.result(call, response)
            except TipoServiceError as error:
                retry += 1
                wait = calls.retry.wait_before(retry, error, waited) if call.retry else None
                if wait is None:
                    raise
                if self._on_retry is not None:
                    self._on_retry(error, wait, retry)
                await self._sleep(wait)
                waited += wait

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncTipoClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
