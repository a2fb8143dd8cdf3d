"""`python -m service` with a switchable cProfile (bench/gpu_sim.py profiles one load level with it).

    TIPO_PROFILE_OUT=/tmp/service.prof python bench/profiled_service.py

SIGUSR1 starts profiling the event loop's thread, SIGUSR2 stops it and writes the stats to
TIPO_PROFILE_OUT (pstats format). Everything else is `python -m service`.
"""

from __future__ import annotations

import cProfile
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

profiler = cProfile.Profile()


def start(signum, frame) -> None:
    profiler.enable()


def stop(signum, frame) -> None:
    profiler.disable()
    profiler.dump_stats(os.environ["TIPO_PROFILE_OUT"])


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    from service.__main__ import main

    main([])
