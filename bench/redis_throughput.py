"""Redis against the in-process broker: events per second and latency, same machine, same run.

Three set-ups: the in-process broker (one worker), the Redis broker with one
worker, and the Redis broker with two workers. The two workers are two
gunicorn masters of one worker each on one Redis, so that receivers and
publishers split evenly between them (gunicorn's shared accept socket hands
nearly every connection of an idle test to the same worker); every user has
a socket on each worker, so every event crosses processes. Each set-up is
measured three ways: one publisher posting one event at a time (latency
without queueing), ``--publishers`` doing the same at once (saturation), and
two publishers posting batches. Receivers and publishers are the
browser-like raw clients of ``bench.harness``; latency runs from just before
a request is written to the frame's arrival.

    python -m bench.redis_throughput            # under a minute
    python -m bench.redis_throughput --duration 8 --users 50
    python -m bench.redis_throughput --setups 0,1 --profile /tmp/prof   # py-spy, batch rounds
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import gevent

from bench.harness import (
    init_payload,
    own_cpu_seconds,
    percentiles,
    raise_fd_limit,
    sample_process,
    save_result,
    start_bench_server,
    worker_pid,
)
from bench.rawws import RawClient
from bench.side_by_side import start_profiler
from bench.throughput import Tally, publish_loop
from tests.support.redis_server import RedisServer
from tests.support.server import LiveServer

logger = logging.getLogger("bench.redis_throughput")

HOST = "127.0.0.1"
#: (label, broker, gunicorn masters of one worker each)
SETUPS = (("memory, 1 worker", "memory", 1), ("redis, 1 worker", "redis", 1),
          ("redis, 2 workers", "redis", 2))


def cpu_seconds(pids: list[int]) -> float:
    return sum(sample_process(pid).cpu_seconds for pid in pids)


def measure(servers: list[LiveServer], pids: list[int], users: list[str], receivers: int,
            batch: int, publishers: int, duration: float, first_index: int,
            tally: Tally, profile: Path | None = None) -> dict[str, Any]:
    """Publish for ``duration`` seconds, spreading publishers over ``servers``; wait for frames.

    Publishers are numbered from ``first_index`` so that no call id repeats
    between rounds (a repeated id would be dropped as a duplicate).
    """
    cpu_before, own_before, started = cpu_seconds(pids), own_cpu_seconds(), time.monotonic()
    # py-spy on the first worker (--profile), while the publishers run.
    profiler = start_profiler(pids[0], duration - 1, profile) if profile is not None else None
    loops = [
        gevent.spawn(publish_loop, servers[n % len(servers)].port, servers[0].api_key,
                     first_index + n, users, batch, started + duration, tally)
        for n in range(publishers)
    ]
    gevent.joinall(loops, raise_error=True)
    published_for = time.monotonic() - started
    if profiler is not None:
        profiler.wait(timeout=30)
    expected = tally.accepted * receivers // len(users)
    deadline = time.monotonic() + 10
    while tally.received < expected and time.monotonic() < deadline:
        gevent.sleep(0.01)
    elapsed = max(tally.last_received - started, published_for)
    return {
        "events_accepted": tally.accepted,
        "events_refused": tally.refused,
        "frames_expected": expected,
        "frames_received": tally.received,
        "events_per_second": round(tally.accepted / published_for),
        "frames_per_second": round(tally.received / elapsed),
        "latency": percentiles(tally.latencies),
        # Cores busy: the gunicorn workers and redis-server together; this generator.
        "cpu_seconds_per_second": round((cpu_seconds(pids) - cpu_before) / elapsed, 2),
        "generator_cpu_seconds_per_second": round((own_cpu_seconds() - own_before) / elapsed, 2),
    }


def run_setup(label: str, broker: str, workers: int, store: RedisServer, args: argparse.Namespace,
              first_index: int) -> list[dict[str, Any]]:
    """Start the servers of one set-up, connect receivers, measure single then batch."""
    overrides = {"REDIS_URL": store.url} if broker == "redis" else {}
    if broker == "redis":
        store.flush()
    servers = [start_bench_server(overrides) for _ in range(workers)]
    clients: list[RawClient] = []
    results = []
    try:
        pids = [worker_pid(server) for server in servers]
        if broker == "redis":
            pids.append(store.process.pid)
        users = [f"receiver-{n:03d}@bench.local" for n in range(args.users)]
        tally = Tally()
        for user in users:
            for n in range(args.sockets_per_user):
                client = RawClient()
                client.open(HOST, servers[n % len(servers)].port, init_payload(user, False), 10)
                client.start_reading(tally.on_text)
                clients.append(client)
        rounds = (("single", 0, 1), ("single", 0, args.publishers),
                  ("batch", args.batch_size, 2))
        for mode, batch, publishers in rounds:
            # Warm-up, not reported: imports, caches, keep-alive connections, scripts.
            measure(servers, pids, users, len(clients), batch, publishers, 1.0, first_index,
                    tally)
            first_index += 100
            tally.reset()
            profile = (Path(args.profile) / f"{broker}-{workers}-{mode}.txt"
                       if args.profile and mode == "batch" else None)
            figures = measure(servers, pids, users, len(clients), batch, publishers,
                              args.duration, first_index, tally, profile)
            first_index += 100
            tally.reset()
            result = {"setup": label, "mode": mode, "batch_size": batch or 1,
                      "publishers": publishers, "receivers": len(clients), **figures}
            logger.info("%s", result)
            results.append(result)
    finally:
        for server in servers:
            server.stop()
        for client in clients:
            client.close()
    return results


def print_table(results: list[dict[str, Any]]) -> None:
    print("| set-up | events/request | publishers | events/s | frames/s | p50 ms | p99 ms "
          "| received/expected | server CPU (workers + redis) | generator CPU |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in results:
        print(f"| {r['setup']} | {r['batch_size']} | {r['publishers']} | {r['events_per_second']} "
              f"| {r['frames_per_second']} | {r['latency'].get('p50_ms')} "
              f"| {r['latency'].get('p99_ms')} | {r['frames_received']}/{r['frames_expected']} "
              f"| {r['cpu_seconds_per_second']} | {r['generator_cpu_seconds_per_second']} |")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m bench.redis_throughput",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3, help="seconds per measurement")
    parser.add_argument("--users", type=int, default=20, help="receiving users")
    parser.add_argument("--sockets-per-user", type=int, default=2,
                        help="receiver sockets per user (split over the workers)")
    parser.add_argument("--publishers", type=int, default=16,
                        help="concurrent single-event publishers of the saturating round")
    parser.add_argument("--batch-size", type=int, default=100, help="events per batch request")
    parser.add_argument("--setups", default="0,1,2",
                        help="set-ups by index: 0 memory, 1 redis 1 worker, 2 redis 2 workers")
    parser.add_argument("--profile", metavar="DIR",
                        help="also sample the (first) worker with py-spy during the batch rounds "
                             "(collapsed stacks in DIR; python -m bench.profile_top)")
    args = parser.parse_args(argv)
    raise_fd_limit(args.users * args.sockets_per_user + 1000)
    chosen = {int(n) for n in args.setups.split(",")}
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="callwire-bench-redis-") as workdir:
        store = RedisServer(Path(workdir)).start()
        try:
            for n, (label, broker, workers) in enumerate(SETUPS):
                if n not in chosen:
                    continue
                results += run_setup(label, broker, workers, store, args, first_index=n * 1000)
        finally:
            store.stop()
    save_result("redis-throughput", {"scenario": "redis-throughput", "results": results})
    print()
    print_table(results)
    return results


if __name__ == "__main__":
    main()
