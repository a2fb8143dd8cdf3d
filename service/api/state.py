"""What the request handlers of one app share, built once in the app's lifespan.

`ServiceState` only holds the parts; each part owns its own job:
- `lifecycle` (service/lifecycle.py): loading -> ready -> draining / failed, with the reason;
- `admission` (service/admission.py): cost-sized permits, the adaptive limit, the wait queue;
- `gateway` (service/gateway.py): every engine call, the engine's health and its watchdog;
- `metrics`, `settings`, the tag index, the API keys.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import Request

from service.admission import Admission
from service.engine.base import Engine
from service.gateway import EngineGateway
from service.lifecycle import Lifecycle, Phase
from service.metrics import Metrics
from service.settings import Settings
from service.tipo.tags import TagIndex


@dataclass
class ServiceState:
    settings: Settings
    engine: Engine
    tag_index: TagIndex | None = None  # loaded during start-up unless given
    api_keys: frozenset[str] = frozenset()
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    admission: Admission = field(init=False)
    metrics: Metrics = field(init=False)
    gateway: EngineGateway = field(init=False)
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        s = self.settings
        self.admission = Admission(s.max_in_flight, s.max_queue, s.queue_timeout_s, adaptive=s.adaptive_limit)
        self.metrics = Metrics(
            read_engine_stats=self.engine.stats,
            read_in_flight=lambda: self.admission.in_flight,
            read_waiting=lambda: self.admission.waiting,
            read_limit=lambda: self.admission.limit.value,
        )
        self.gateway = EngineGateway(self.engine, self.metrics, self.admission, s.engine_stall_s)

    @property
    def model_name(self) -> str:
        """The name the API reports; engines may learn theirs only when they start."""
        return self.settings.served_model_name or self.engine.model_name or "tipo"

    def liveness(self) -> tuple[bool, str]:
        """Restart this process? Never because of a remote upstream (readiness covers that)."""
        if self.lifecycle.phase is Phase.FAILED:
            return False, self.lifecycle.reason
        if self.lifecycle.phase is not Phase.LOADING:
            problem = self.gateway.fatal_problem()
            if problem:
                return False, problem
        return True, "alive"

    def readiness(self) -> tuple[bool, str]:
        if not self.lifecycle.serving:
            return False, self.lifecycle.reason
        problem = self.gateway.problem()
        return (False, problem) if problem else (True, "ready")


def get_state(request: Request) -> ServiceState:
    return request.app.state.service
