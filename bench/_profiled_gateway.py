"""`royalty ...` under a cProfile that signals switch on and off (bench/gateway_cpu.py).

    python bench/_profiled_gateway.py STATS_FILE up --engine-url ...
    python bench/_profiled_gateway.py - keys create ...   (no profiling: any command)

SIGUSR1 starts profiling the main thread (the event loop: every request's Python work);
SIGUSR2 stops it and writes the statistics to STATS_FILE. Outside those windows the gateway
runs unprofiled, so start-up and idle time stay out of the profile.

The command line is the one of whichever source tree comes first on the path, so that a
revision from before the shell moved to `royalty/` (`--cpu-base`) runs its own CLI.
"""

from __future__ import annotations

import cProfile
import signal
import sys
import time
from types import FrameType


def royalty_main():  # type: ignore[no-untyped-def]
    try:  # a source tree from before the application shell moved out of gateway/
        from gateway.cli import main  # type: ignore[import-not-found]
    except ImportError:
        from royalty.cli.main import main
    return main


def main() -> None:
    stats_file = sys.argv[1]
    if stats_file == "-":
        sys.argv = ["royalty", *sys.argv[2:]]
        royalty_main()()
        return
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
    royalty_main()()


if __name__ == "__main__":
    main()
