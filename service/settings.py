"""One settings object for the whole service: environment (prefix TIPO_), CLI flags and code.

Every field is documented in the README's settings table; deploy/ manifests are checked against
these names in tests, so renaming a field breaks the build rather than production.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_STORE_DIR = REPO_ROOT / "model_store" / "models"
PROFILE_NAMES = ("fixed", "kgen")  # service/tipo/profile.py PROFILES


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TIPO_", extra="ignore", cli_prog_name="python -m service")

    # --- HTTP server
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 in containers).")
    port: int = Field(8000, ge=1, le=65535, description="TCP port.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    header_timeout_s: float = Field(10.0, gt=0, description="Longest time to receive a request's headers "
                                    "(from the connection's start or the next request's first byte); past it: "
                                    "408 and the connection is closed.")
    body_timeout_s: float = Field(30.0, gt=0, description="Longest time to receive a request's body once its "
                                  "headers are in; past it: 408 and the connection is closed.")
    keep_alive_s: float = Field(5.0, gt=0, description="How long an idle keep-alive connection stays open "
                                "(uvicorn's timeout_keep_alive). Clients and proxies must drop idle connections "
                                "sooner, or a request sent as the server closes is lost (tipo_client: 2 s).")
    max_connections: int = Field(1000, ge=1, description="Open connections (and requests) at once (uvicorn's "
                                 "limit_concurrency); past it new requests get 503.")

    # --- engine
    engine: Literal["vllm", "remote", "scripted", "simulated"] = Field(
        "vllm", description="vllm: in-process AsyncLLM; remote: an OpenAI-compatible completions server; "
        "scripted: replay completions from TIPO_SCRIPTED_PATH; simulated: a simulated GPU with synthetic TIPO "
        "answers (benchmarks only, TIPO_SIM_*)."
    )
    model: str = Field(
        "auto",
        description="Local model directory. 'auto': the first TIPO model found under model_store/models/, "
        "else the tiny random demo model (built on first use; its outputs are random).",
    )
    served_model_name: str = Field("", description="Model name reported by the API; default: the directory name.")
    scripted_path: str = Field("", description="JSON file of {prompt, completion, seed?} entries (scripted engine).")
    scripted_delay_s: float = Field(0.0, ge=0, description="Scripted engine: seconds each call waits before "
                                    "answering (tests of load and shutdown).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="vLLM device; auto = cuda when available.")
    dtype: str = Field("auto", description="vLLM dtype (auto: bfloat16 on CPU, the model's dtype on GPU).")
    max_model_len: int = Field(1024, ge=64, le=8192, description="Context length given to vLLM (TIPO: 1024).")
    max_num_seqs: int = Field(256, ge=1, description="vLLM: most sequences in one engine step.")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="vLLM on CUDA: share of GPU memory.")
    kv_cache_gib: int = Field(1, ge=1, description="vLLM on CPU: KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE).")
    cpu_reserved_cores: int | None = Field(None, ge=0, description="vLLM on CPU: cores kept off the model's "
                                           "compute for its scheduler loop and this server "
                                           "(VLLM_CPU_NUM_OF_RESERVED_CPU). Default: 0 on machines with up to "
                                           "4 cores (2 cores: +76 % throughput, docs/BENCHMARKS.md), vLLM's own "
                                           "default above.")
    enforce_eager: bool = Field(True, description="vLLM: skip torch.compile / CUDA graphs (faster start).")
    remote_url: str = Field("", description="Base URL of the remote OpenAI-compatible server, e.g. http://vllm:8000/v1.")
    remote_model: str = Field("", description="Model name to send to the remote server; default: its first model.")
    remote_api_key: str = Field("", description="Bearer key for the remote server.")
    remote_timeout_s: float = Field(60.0, gt=0, description="Timeout of one remote call.")
    remote_retries: int = Field(2, ge=0, le=10, description="Retries of a failed remote call (with backoff).")
    # The simulated GPU (TIPO_ENGINE=simulated, service/engine/simulated.py): TIPO-500M on an H200 by
    # default, sources in docs/BENCHMARKS.md "GPU simulation".
    sim_step_fixed_ms: float = Field(1.3, ge=0, description="Simulated GPU: fixed time of one engine step (ms).")
    sim_decode_us_per_seq: float = Field(6.0, ge=0, description="Simulated GPU: step time per running sequence "
                                         "(us).")
    sim_decode_us_per_context_token: float = Field(0.03, ge=0, description="Simulated GPU: step time per token "
                                                   "of context the running sequences read (KV cache, us).")
    sim_prefill_us_per_token: float = Field(3.0, ge=0, description="Simulated GPU: step time per prompt token "
                                            "prefilled (us).")
    sim_max_batched_tokens: int = Field(8192, ge=1, description="Simulated GPU: token budget of one step "
                                        "(vLLM's max_num_batched_tokens); sequences per step: TIPO_MAX_NUM_SEQS.")
    sim_client_cpu_us_per_token: float = Field(27.0, ge=0, description="Simulated GPU: CPU this process spends "
                                               "per generated token, as vLLM's in-process client does "
                                               "(bench/client_cpu.py measures it).")
    sim_client_cpu_us_per_request: float = Field(450.0, ge=0, description="Simulated GPU: CPU this process "
                                                 "spends per engine request, as vLLM's in-process client does.")

    # --- TIPO defaults
    default_profile: Literal["fixed", "kgen"] = Field("fixed", description="Profile used when a request names none.")
    allowed_profiles: str = Field("fixed,kgen", description="Comma-separated profiles a request may use (422 "
                                  "naming them otherwise); must include default_profile. `fixed` alone keeps "
                                  "the template guard for every request (docs/PROFILES.md).")

    # --- admission control and timeouts
    max_in_flight: int = Field(64, ge=1, description="Most engine sequences at once (a TIPO request is 1, a batch "
                               "items x n, a completion prompts x n); more wait in the queue.")
    adaptive_limit: bool = Field(True, description="Adapt the engine sequences allowed at once (1 .. max_in_flight) "
                                 "to the engine's time per token, so admitted requests finish in time under "
                                 "overload; false: always max_in_flight.")
    max_queue: int = Field(256, ge=0, description="Engine sequences waiting for a slot; past it: 429 with "
                           "Retry-After.")
    queue_timeout_s: float = Field(30.0, gt=0, description="Longest wait for a slot before 503.")
    request_timeout_s: float = Field(120.0, gt=0, description="Cap of one request's time, queue wait included "
                                     "(504 past it; 503 at once when it could not be met at the current pace).")
    engine_stall_s: float = Field(60.0, gt=0, description="Engine without progress while work is pending this "
                                  "long: readiness and liveness fail.")
    shutdown_grace_s: float = Field(30.0, ge=0, description="On SIGTERM, time given to in-flight requests.")

    # --- input limits
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest accepted request body.")
    max_tags: int = Field(512, ge=1, description="Most tags in one request's tag text.")
    max_caption_chars: int = Field(4000, ge=1, description="Longest natural-language caption.")
    max_tag_chars: int = Field(8000, ge=1, description="Longest tag text (the A1111 weight parser's cost grows "
                               "with length x bracket depth).")
    max_bracket_depth: int = Field(32, ge=1, description="Deepest nesting of ( ) and [ ] (unclosed ones count) "
                                   "in the tag text or caption.")
    max_batch: int = Field(64, ge=1, description="Most engine sequences one request may bring: requests x n in "
                           "/v1/tipo/batch, prompts x n in /v1/completions.")
    max_ban_entries: int = Field(256, ge=1, le=4096, description="Most ban_tags entries in one request (each is "
                                 "tried on every tag of every model call; 4096 at most).")
    max_ban_chars: int = Field(4096, ge=1, description="Longest ban_tags: characters of the text, or of all list "
                               "entries together.")
    max_format_chars: int = Field(2048, ge=1, description="Longest format template (the presets: under 200).")
    max_format_placeholders: int = Field(20, ge=1, description="Most <|...|> placeholders in a format template "
                                         "(each repeats a tag list or caption in the answer; the presets: 10).")
    regex_budget_ms: float = Field(50.0, gt=0, description="Time all ban_tags regexes of one request may take "
                                   "(compiling and matching, over all its model calls); past it: 422 naming "
                                   "the entry.")

    # --- access
    api_keys: str = Field("", description="Comma-separated API keys; empty = no auth.")
    api_keys_file: str = Field("", description="File with one API key per line.")
    metrics_require_key: bool = Field(False, description="Require an API key for /metrics.")
    cors_origins: str = Field("", description="Comma-separated allowed CORS origins; empty = no CORS.")

    @field_validator("allowed_profiles")
    @classmethod
    def _known_profiles(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        unknown = [name for name in names if name not in PROFILE_NAMES]
        if unknown or not names:
            raise ValueError(f"allowed_profiles must name one or more of {', '.join(PROFILE_NAMES)} "
                             f"(comma-separated), got {value!r}")
        return ",".join(dict.fromkeys(names))

    @model_validator(mode="after")
    def _default_profile_is_allowed(self) -> Settings:
        if self.default_profile not in self.allowed_profile_names:
            raise ValueError(f"default_profile {self.default_profile!r} is not in allowed_profiles "
                             f"({self.allowed_profiles})")
        return self

    @property
    def allowed_profile_names(self) -> tuple[str, ...]:
        return tuple(self.allowed_profiles.split(","))
