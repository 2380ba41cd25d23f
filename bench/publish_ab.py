"""Publish CPU of several servers running at once, measured in alternating windows.

``bench.side_by_side`` runs its servers one after the other, one long
window each; on a shared box the drift between them (others' work, where
the scheduler puts the generator) moved a one-event figure by up to 30 %
from one run to the next. Here every server (``--servers``: the bare
floor, Flask-SocketIO, Callwire from ``--before``, Callwire now) runs at
the same time, each as side_by_side runs it (one gevent worker, ``--users``
receivers with one browser-like socket each), and each round gives every
server one short window, one event per POST and then ``--batch-size`` per
POST, with ``--publishers`` keep-alive publishers as fast as answers come.
The median over ``--rounds`` rounds is reported, with the range.

    python -m bench.publish_ab --before /tmp/before --rounds 8
"""

from __future__ import annotations

import argparse
import logging
import statistics
from pathlib import Path
from typing import Any

from bench.harness import (
    quiet_generator_gc,
    raise_fd_limit,
    save_result,
    start_bench_server,
    worker_pid,
)
from bench.rawws import RawClient
from bench.side_by_side import connect_all, load_average, saturate, start_checkout, start_peer
from bench.throughput import Tally

logger = logging.getLogger("bench.publish_ab")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m bench.publish_ab",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="bare,socketio,before,after",
                        help="comma list of bare, socketio, before, after")
    parser.add_argument("--before", metavar="CHECKOUT", help="checkout run as 'before'")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--publishers", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--duration", type=float, default=3, help="seconds per window")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)
    quiet_generator_gc()
    raise_fd_limit(2 * args.users + 1000)
    load_before = load_average()
    names = args.servers.split(",")
    servers = {}
    for name in names:
        servers[name] = (start_checkout(Path(args.before)) if name == "before"
                         else start_bench_server() if name == "after" else start_peer(name))
    clients: list[RawClient] = []
    figures: dict[str, dict[str, list[float]]] = {
        name: {"single": [], "batch": [], "single_rate": [], "batch_rate": []}
        for name in servers
    }
    received_ok = True
    try:
        pids = {name: worker_pid(server) for name, server in servers.items()}
        tallies = {name: Tally() for name in servers}
        users = [f"user-{n:04d}@bench.local" for n in range(args.users)]
        for name, server in servers.items():
            connected, errors = connect_all(name, server.port, users, 100,
                                            tallies[name].on_text)
            clients += connected
            if errors:
                raise RuntimeError(f"{name}: {len(errors)} receivers failed: {errors[:3]}")
        index = 0
        for round_number in range(args.rounds + 1):  # round 0 warms up
            for label, batch in (("single", 0), ("batch", args.batch_size)):
                for name, server in servers.items():
                    tally = tallies[name]
                    tally.reset()
                    result = saturate(server.port, pids[name], users, batch, args.publishers,
                                      args.duration, tally, index)
                    index += 100
                    received_ok &= result["frames_received"] == result["frames_expected"]
                    if round_number:
                        figures[name][label].append(result["server_cpu_us_per_event"])
                        figures[name][f"{label}_rate"].append(result["events_per_second"])
                    logger.info("round %d %s %s: %s µs/event, %s events/s", round_number, name,
                                label, result["server_cpu_us_per_event"],
                                result["events_per_second"])
    finally:
        for server in servers.values():
            server.stop()
        for client in clients:
            client.close()
    summary = {"scenario": "publish-ab", "args": vars(args), "load_before": load_before,
               "load_after": load_average(), "figures": figures, "all_received": received_ok}
    save_result("publish-ab", summary)
    print(f"\nload average before {load_before}, after {summary['load_after']}; "
          f"every accepted event received: {received_ok}\n")
    print(f"server CPU µs per event, median of {args.rounds} windows of {args.duration:g} s "
          "(range; ratio to the floor's median)\n")
    print("| workload | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for label, title in (("single", "one event per POST"),
                         ("batch", f"{args.batch_size} events per POST")):
        medians = {name: statistics.median(figures[name][label]) for name in names}
        floor = medians.get("bare")
        cells = [f"{medians[name]:,.1f} ({min(figures[name][label]):,.0f}-"
                 f"{max(figures[name][label]):,.0f})"
                 + (f" {medians[name] / floor:.2f}x" if floor and name != "bare" else "")
                 for name in names]
        print(f"| {title} | " + " | ".join(cells) + " |")
        rates = [f"{statistics.median(figures[name][f'{label}_rate']):,.0f}" for name in names]
        print(f"| {title}: events/s (median) | " + " | ".join(rates) + " |")
    return summary


if __name__ == "__main__":
    main()
