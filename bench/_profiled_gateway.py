"""`royalty ...` under a cProfile that signals switch on and off (bench/gateway_cpu.py).

    python bench/_profiled_gateway.py STATS_FILE up --engine-url ...

SIGUSR1 starts profiling the main thread (the event loop: every request's Python work);
SIGUSR2 stops it and writes the statistics to STATS_FILE. Outside those windows the gateway
runs unprofiled, so start-up and idle time stay out of the profile.
"""

from __future__ import annotations

import cProfile
import signal
import sys
import time
from types import FrameType


def main() -> None:
    stats_file = sys.argv[1]
    # CPU time of the profiled (event loop) thread, not wall time: on a shared core, time
    # the process spends preempted would otherwise land on whatever function was running.
    prof = cProfile.Profile(time.thread_time)

    def start(_sig: int, _frame: FrameType | None) -> None:
        prof.enable()

    def stop(_sig: int, _frame: FrameType | None) -> None:
        prof.disable()
        prof.dump_stats(stats_file)
        prof.clear()

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    sys.argv = ["royalty", *sys.argv[2:]]
    from royalty.cli.main import main as royalty

    royalty()


if __name__ == "__main__":
    main()
