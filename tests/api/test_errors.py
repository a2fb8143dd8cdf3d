"""Which failure gets which answer (service/api/errors.py ERROR_RULES): input errors of the core are 4xx
naming their field; a bug in the core is a logged 500 with a generic body, never a 422 with its message."""

from __future__ import annotations

import logging

import httpx
import pytest

from service.admission import QueueFull
from service.api.errors import ERROR_RULES, ApiError, RequestTimeout, api_error_for
from service.engine.base import EngineError, PromptTooLongError
from service.tipo import runner as tipo_runner
from service.tipo.errors import InputError
from service.tipo.format import UnknownFormat
from service.tipo.postprocess import InvalidBanTag
from service.tipo.profile import ReferenceFailure
from tests.api.tipo.test_serving import e2e_vectors, request_of, script_of

SECRET = "internal detail: tag_map['general'] was None"
GENERIC = {"message": "internal server error", "type": "server_error", "param": None, "code": None}


@pytest.mark.parametrize("exc, status, kind, param", [
    (InputError("height must be positive", "height"), 422, "invalid_request_error", "height"),
    (UnknownFormat("no such preset"), 422, "invalid_request_error", "format"),
    (InvalidBanTag("(a", "missing )"), 422, "invalid_request_error", "ban_tags"),
    (ReferenceFailure("IndexError"), 422, "reference_failure", None),
    (PromptTooLongError("1100 tokens"), 422, "invalid_request_error", None),
    (QueueFull("queue full", retry_after_s=3), 429, "rate_limit_error", None),
    (EngineError("engine died"), 503, "engine_error", None),
    (RequestTimeout(), 504, "timeout_error", None),
])
def test_each_known_failure_has_its_status_type_and_field(exc, status, kind, param):
    error = api_error_for(exc)
    assert (error.status, error.type, error.param) == (status, kind, param)


def test_the_most_specific_rule_decides_and_unknown_failures_are_500(caplog):
    assert api_error_for(QueueFull("full", retry_after_s=3)).headers == {"Retry-After": "3"}
    assert api_error_for(EngineError("x")).headers == {"Retry-After": "5"}
    for bug in (ValueError(SECRET), KeyError(SECRET), TypeError(SECRET), RuntimeError(SECRET)):
        assert type(bug) not in ERROR_RULES
        with caplog.at_level(logging.ERROR, logger="service.api"):
            error = api_error_for(bug)
        assert error.status == 500 and error.body() == {"error": GENERIC}
    assert caplog.text.count(SECRET) == 4  # logged with the traceback, never answered
    already = ApiError(418, "kept")
    assert api_error_for(already) is already


@pytest.fixture
def vector():
    return next(v for v in e2e_vectors() if v["group"] == "e2e_comfy")


@pytest.mark.parametrize("where", ["prepare", "run"])
def test_a_bug_in_the_core_is_a_logged_500_not_a_422(where, vector, scripted_server, monkeypatch, caplog):
    base_url = scripted_server(script_of(vector))
    body = request_of(vector)
    assert httpx.post(f"{base_url}/v1/tipo", json=body, timeout=60).status_code == 200  # the input is fine

    def bug(*args, **kwargs):
        raise ValueError(SECRET)

    # A ValueError is what the core's own code raises by mistake (a bad index, a bad conversion): it used
    # to leak as a 422 with its message.
    monkeypatch.setattr(tipo_runner, "plan_request" if where == "prepare" else "postprocess", bug)
    with caplog.at_level(logging.ERROR):
        response = httpx.post(f"{base_url}/v1/tipo", json=body, timeout=60)
        batch = httpx.post(f"{base_url}/v1/tipo/batch", json={"requests": [body]}, timeout=60)
        chat = httpx.post(f"{base_url}/v1/chat/completions", timeout=60, json={
            "messages": [{"role": "user", "content": "1girl, solo"}]})
    assert response.status_code == 500 and response.json() == {"error": GENERIC}
    assert SECRET not in response.text and SECRET in caplog.text
    if where == "prepare":  # the batch's items are built before any model work: the whole call fails
        assert batch.status_code == 500 and batch.json() == {"error": GENERIC}
        assert chat.status_code == 500 and chat.json() == {"error": GENERIC}
    else:  # an item that fails while running is that item's error; the batch answers
        assert batch.status_code == 200 and batch.json()["data"][0]["error"] == GENERIC
    assert SECRET not in chat.text

    monkeypatch.undo()
    assert httpx.post(f"{base_url}/v1/tipo", json=body, timeout=60).status_code == 200  # the server is fine
