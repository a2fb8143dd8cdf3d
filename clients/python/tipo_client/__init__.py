"""Typed client of the tipo-service HTTP API (TIPO prompt upsampling), sync and async.

    from tipo_client import TipoClient, TipoServiceError

    with TipoClient("http://127.0.0.1:8000") as client:
        answer = client.tipo(tags="1girl, hatsune miku", nl_prompt="", seed=1234, profile="kgen")
        print(answer["prompt"])

Request and response bodies are plain dicts typed by the TypedDicts of `tipo_client.models`, generated from the
service's OpenAPI schema. Errors of every kind raise `TipoServiceError`; 429 and 503 answers are retried
after their Retry-After (`RetryPolicy`).
"""

from __future__ import annotations

from . import constants, models
from ._client import (
    DEFAULT_URL,
    ENV_API_KEY,
    ENV_URL,
    NO_RETRY,
    AsyncTipoClient,
    RetryPolicy,
    TipoClient,
    __version__,
    batch_results,
    parse_retry_after,
)
from ._errors import TipoServiceError
from .models import (
    ModelList,
    ProbeAnswer,
    TipoAddonOutput,
    TipoBatchItem,
    TipoBatchRequest,
    TipoBatchResponse,
    TipoFormatRequest,
    TipoFormatResponse,
    TipoRequest,
    TipoResponse,
)

__all__ = [
    "DEFAULT_URL", "ENV_API_KEY", "ENV_URL", "NO_RETRY", "AsyncTipoClient", "ModelList", "ProbeAnswer", "RetryPolicy",
    "TipoAddonOutput", "TipoBatchItem", "TipoBatchRequest", "TipoBatchResponse", "TipoClient", "TipoFormatRequest",
    "TipoFormatResponse", "TipoRequest", "TipoResponse", "TipoServiceError", "__version__", "batch_results",
    "constants", "models", "parse_retry_after",
]
