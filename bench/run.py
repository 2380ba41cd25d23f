"""Run every benchmark of issue 2 in a row and print the tables of bench/README.md.

1. idle connections with the server's gc tuning on (the default), then off;
2. throughput with one event per request, then with batches, then one event per
   request again while ``--connections`` idle sockets are held.

Each part starts its own server and stops by itself; the whole run takes
about three minutes on the 2-core box. The Redis comparison is separate:
``python -m bench.redis_throughput``.

    python -m bench.run --connections 10000
    python -m bench.run --connections 2000 --skip-gc-off --duration 5   # a quick look
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
from typing import Any

from bench import idle_connections, throughput
from bench.harness import save_result, wait_for_quiet_machine


def describe_machine() -> dict[str, Any]:
    """What the figures were measured on."""
    with open("/proc/meminfo") as meminfo:
        total_kib = int(meminfo.readline().split()[1])
    model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(total_kib / 2**20, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m bench.run",
                                     description=__doc__.split("\n\n")[0])
    idle_connections.add_arguments(parser)
    parser.set_defaults(gc_tuning=None)
    parser.add_argument("--duration", type=float, default=10,
                        help="seconds of publishing per throughput measurement (default 10)")
    parser.add_argument("--batch-size", type=int, default=500, help="events per batch request")
    parser.add_argument("--users", type=int, default=20, help="receiving users for throughput")
    parser.add_argument("--skip-gc-off", action="store_true",
                        help="measure idle connections with the gc tuning on only")
    parser.add_argument("--quiet-wait", type=float, default=0,
                        help="wait up to this many seconds for an idle machine before each part")
    args = parser.parse_args(argv)

    summary: dict[str, Any] = {"machine": describe_machine(), "idle": [], "throughput": []}
    levels = idle_connections.levels_for(args.connections, args.levels)
    tunings = [args.gc_tuning] if args.gc_tuning else ["on"] if args.skip_gc_off else ["on", "off"]
    for tuning in tunings:
        busy = wait_for_quiet_machine(args.quiet_wait) if args.quiet_wait else None
        result = idle_connections.run(args.connections, levels, args.probes, args.rate,
                                      args.hold, tuning, args.legacy, args.concurrency,
                                      args.trace_gc, args.churn_rate, args.churn_seconds)
        result["machine_busy_percent_before"] = busy
        save_result(f"idle_connections-gc-{tuning}", result)
        summary["idle"].append(result)
    for mode, publishers, idle in (("single", 4, 0), ("batch", 2, 0),
                                   ("single", 4, args.connections)):
        busy = wait_for_quiet_machine(args.quiet_wait) if args.quiet_wait else None
        result = throughput.run(mode, args.batch_size, publishers, args.duration, args.users,
                                1, idle, args.legacy)
        result["machine_busy_percent_before"] = busy
        save_result(f"throughput-{mode}-idle-{idle}", result)
        summary["throughput"].append(result)
    path = save_result("summary", summary)

    print(f"\nmachine: {summary['machine']}")
    for result in summary["idle"]:
        print("\n" + idle_connections.format_table(result))
    print("\n" + throughput.format_table(summary["throughput"]))
    print(f"\nall figures: {path}")
    return summary


if __name__ == "__main__":
    main()
