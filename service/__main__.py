"""`python -m service [--port 8000 --engine vllm --model DIR ...]`: run the HTTP server.

Settings come from TIPO_* environment variables and the same names as CLI flags
(`python -m service --help`). Nothing is downloaded: TIPO_MODEL is a local directory, or `auto`
(the first TIPO model under model_store/models/, else the tiny random demo model, built offline).
The engine is created inside the app's lifespan, never at import time (vLLM spawns processes).
"""

from __future__ import annotations

import logging
import math
import sys
import time

import uvicorn

from service.settings import Settings

logger = logging.getLogger("service")

DEMO_WARNING = """
################################################################################
#  NO TIPO MODEL FOUND: SERVING THE DEMO MODEL                                 #
#                                                                              #
#  It is NOT TIPO: a tiny model trained for two minutes on synthetic TIPO      #
#  documents. It answers in TIPO's format with real tags, but its choices are  #
#  meaningless. For real output put a TIPO model under model_store/models/     #
#  (python -m model_store fetch TIPO-200M-ft2) or set TIPO_MODEL to a local    #
#  model directory.                                                            #
#  Model used: {path:<64}#
################################################################################"""


def main(argv: list[str] | None = None) -> None:
    settings = Settings(_cli_parse_args=sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = resolve_model(settings)

    from service.app import create_app
    from service.server import uvicorn_config

    app = create_app(settings)
    config = uvicorn_config(app, settings, timeout_graceful_shutdown=max(1, math.ceil(settings.shutdown_grace_s)))
    DrainingServer(config, app, settings.shutdown_grace_s).run()


LAST_ANSWERS_S = 3  # after the drain: time for the last answers to go out


class DrainingServer(uvicorn.Server):
    """uvicorn's Server with the service's SIGTERM behaviour.

    First SIGTERM (or Ctrl+C): readiness turns 503 and new requests get 503 at once, while the port
    stays open so probes and load balancers see it; requests already admitted (running or queued) run
    to the end, for at most `grace_s`. What still runs then is ended: a 503 in the JSON error shape,
    or an error event that ends a stream. Then uvicorn stops as usual: it closes the port, lets the
    last answers go out, and the app's lifespan shuts the engine down. A second signal stops at once.
    The process exits 0 (plain uvicorn re-raises SIGTERM after its shutdown: exit status 143).
    """

    def __init__(self, config, app, grace_s: float):
        super().__init__(config)
        self.app = app
        self.grace_s = grace_s
        self.drain_deadline: float | None = None
        self.drain_logged = False

    def handle_exit(self, sig: int, frame) -> None:
        # A signal handler: only set flags here (no logging, no awaiting); on_tick acts on them.
        if self.drain_deadline is not None:
            self.should_exit = self.force_exit = True
            return
        self.drain_deadline = time.monotonic() + self.grace_s
        state = getattr(self.app.state, "service", None)
        if state is not None:
            state.lifecycle.draining()

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and not self.should_exit:
            state = getattr(self.app.state, "service", None)
            busy = state.admission.in_flight + state.admission.waiting if state is not None else 0
            if not self.drain_logged:
                self.drain_logged = True
                logger.info("shutdown signal: not ready any more; waiting up to %g s for %d admitted "
                            "request(s)", self.grace_s, busy)
            left_s = self.drain_deadline - time.monotonic()
            if busy == 0 or left_s <= 0:
                if busy:
                    logger.warning("shutdown grace of %g s is over with %d engine sequence(s) unfinished: "
                                   "answering them 503 (streams: an error event)", self.grace_s, busy)
                    state.lifecycle.stop_now()
                    state.admission.close()
                # Time for the last answers to go out before uvicorn cancels what is left.
                self.config.timeout_graceful_shutdown = LAST_ANSWERS_S
                self.should_exit = True
        return await super().on_tick(counter)


def resolve_model(settings: Settings) -> Settings:
    """Turn TIPO_MODEL=auto into a directory (building the demo model if needed); warn about the demo."""
    if settings.engine != "vllm":
        return settings
    from model_store import resolve_model as resolve

    resolved = resolve(settings.model)
    if resolved.is_demo:
        logger.warning(DEMO_WARNING.format(path=str(resolved.path)[:64]))
    else:
        logger.info("model: %s (%s)", resolved.name, resolved.path)
    return settings.model_copy(update={
        "model": str(resolved.path),
        "served_model_name": settings.served_model_name or resolved.name,
    })


if __name__ == "__main__":
    main()
