"""Throughput: events per second from ``POST /api/v6/call/events`` to sockets.

Starts the real server, connects ``--users`` receivers (browser-like raw
clients), then has ``--publishers`` keep-alive connections publish as fast
as the server answers for ``--duration`` seconds: one event per request
(single) or arrays of ``--batch-size`` events (batch). Every event walks a
call through initiated, ringing, in-progress, ended, so each is accepted
and delivered once per receiver socket of its user. Reports events accepted
per second, frames received per second and publish-to-receive latency
(from just before the request is written to the frame's arrival).

    python -m bench.throughput --mode single
    python -m bench.throughput --mode batch --batch-size 500
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import gevent

from bench.harness import (
    CpuMeter,
    Publisher,
    init_payload,
    percentiles,
    quiet_generator_gc,
    raise_fd_limit,
    save_result,
    start_bench_server,
    worker_pid,
)
from bench.idle_connections import CALL_STATUSES, open_idle
from bench.rawws import RawClient

logger = logging.getLogger("bench.throughput")

HOST = "127.0.0.1"


@dataclass
class Tally:
    """What was published and what arrived, with send times to compute latency."""

    sent: dict[tuple[str, str], float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    accepted: int = 0
    refused: int = 0
    reported_delivered: int = 0
    received: int = 0
    last_received: float = 0.0
    def reset(self) -> None:
        """Forget the counts (after the warm-up); send times stay for late frames."""
        self.latencies = []
        self.accepted = self.refused = self.reported_delivered = self.received = 0
        self.last_received = 0.0

    def on_text(self, text: str, arrived: float) -> None:
        message = json.loads(text)
        sent_at = self.sent.get((message.get("callId"), message.get("status")))
        if sent_at is None:
            return
        self.received += 1
        self.last_received = arrived
        self.latencies.append(arrived - sent_at)


def event_stream(publisher_index: int, users: list[str]):
    """Yield the events of one publisher: calls rotate over users, statuses in order."""
    sequence = 0
    while True:
        call = sequence // len(CALL_STATUSES)
        yield {
            "callId": f"p{publisher_index}-call{call}",
            "userId": users[(call * 7 + publisher_index) % len(users)],
            "status": CALL_STATUSES[sequence % len(CALL_STATUSES)],
            "data": {"type": "status-update", "customerNumber": "+15550100"},
        }
        sequence += 1


def publish_loop(port: int, api_key: str, index: int, users: list[str], batch: int,
                 stop_at: float, tally: Tally) -> None:
    """Publish back to back until ``stop_at``; one event per request when ``batch`` is 0."""
    publisher = Publisher(port, api_key)
    events = event_stream(index, users)
    try:
        while time.monotonic() < stop_at:
            items = [next(events) for _ in range(batch or 1)]
            now = time.monotonic()
            for item in items:
                tally.sent[(item["callId"], item["status"])] = now
            code, answer = publisher.post(items if batch else items[0])
            results = answer["data"] if batch else [{"code": code, **(answer.get("data") or {})}]
            for result in results:
                if result.get("code") == 200 and result.get("id"):
                    tally.accepted += 1
                    tally.reported_delivered += result.get("delivered", 0)
                else:
                    tally.refused += 1
    finally:
        publisher.close()


def measure(port: int, api_key: str, pid: int, users: list[str], sockets_per_user: int,
            batch: int, publishers: int, duration: float, tally: Tally,
            first_index: int = 0) -> dict[str, Any]:
    """Publish for ``duration`` seconds and wait (bounded) for every frame to arrive.

    Publishers are numbered from ``first_index``: call ids must not repeat
    between rounds, or the repeats are dropped as duplicates.
    """
    meter = CpuMeter(pid)
    started = time.monotonic()
    stop_at = started + duration
    workers = [
        gevent.spawn(publish_loop, port, api_key, index, users, batch, stop_at, tally)
        for index in range(first_index, first_index + publishers)
    ]
    gevent.joinall(workers, raise_error=True)
    published_for = time.monotonic() - started
    expected = tally.accepted * sockets_per_user
    deadline = time.monotonic() + 10
    while tally.received < expected and time.monotonic() < deadline:
        gevent.sleep(0.01)
    cpu = meter.percent()
    elapsed = max(tally.last_received, started + published_for) - started
    return {
        "events_accepted": tally.accepted,
        "events_refused": tally.refused,
        "frames_expected": expected,
        "frames_received": tally.received,
        "server_reported_delivered": tally.reported_delivered,
        "publish_seconds": round(published_for, 2),
        "events_per_second": round(tally.accepted / published_for),
        "frames_per_second": round(tally.received / elapsed),
        "latency": percentiles(tally.latencies),
        **cpu,
    }


def run(mode: str, batch_size: int, publishers: int, duration: float, users: int,
        sockets_per_user: int, idle: int, legacy: bool) -> dict[str, Any]:
    """Run one throughput measurement against a fresh server and return the figures."""
    quiet_generator_gc()
    raise_fd_limit(users * sockets_per_user + idle + 1000)
    server = start_bench_server({"WS_REQUIRE_TOKEN": "false"} if legacy else None)
    receivers: list[RawClient] = []
    idle_clients: list[RawClient] = []
    try:
        pid = worker_pid(server)
        logger.info("server on 127.0.0.1:%d, worker pid %d (py-spy top --pid %d)",
                    server.port, pid, pid)
        tally = Tally()
        emails = [f"receiver-{n:03d}@bench.local" for n in range(users)]
        for email in emails:
            for _ in range(sockets_per_user):
                client = RawClient()
                client.open(HOST, server.port, init_payload(email, legacy), 10)
                client.start_reading(tally.on_text)
                receivers.append(client)
        errors: list[str] = []
        if idle:
            open_idle(server.port, 0, idle, 100, legacy, idle_clients, errors)
        batch = batch_size if mode == "batch" else 0
        # Warm-up (not reported): imports, caches and the first keep-alive connections.
        measure(server.port, server.api_key, pid, emails, sockets_per_user, batch,
                publishers, 1.0, tally, first_index=1000)
        tally.reset()
        figures = measure(server.port, server.api_key, pid, emails, sockets_per_user, batch,
                          publishers, duration, tally)
        return {
            "scenario": "throughput",
            "mode": mode,
            "batch_size": batch or 1,
            "publishers": publishers,
            "receivers": len(receivers),
            "users": users,
            "idle_connections": len(idle_clients),
            "idle_open_errors": len(errors),
            "deflate_accepted": sum(1 for c in receivers + idle_clients if c.extensions),
            **figures,
        }
    finally:
        server.stop()
        for client in receivers + idle_clients:
            client.close()


def format_row(result: dict[str, Any]) -> str:
    """Return one Markdown table row (as pasted into bench/README.md)."""
    lat = result["latency"]
    return (
        f"| {result['mode']} | {result['batch_size']} | {result['publishers']} "
        f"| {result['receivers']} | {result['idle_connections']} "
        f"| {result['events_per_second']} | {result['frames_per_second']} "
        f"| {lat.get('p50_ms')} | {lat.get('p99_ms')} | {lat.get('max_ms')} "
        f"| {result['frames_received']}/{result['frames_expected']} "
        f"| {result['server_cpu_percent']} | {result['generator_cpu_percent']} "
        f"| {result['other_cpu_percent']} |"
    )


def format_table(results: list[dict[str, Any]]) -> str:
    """Return the figures of several runs as one Markdown table."""
    return "\n".join([TABLE_HEADER, *(format_row(r) for r in results)])


TABLE_HEADER = (
    "| mode | events/request | publishers | receivers | idle | events/s | frames/s "
    "| p50 ms | p99 ms | max ms | received/expected | server CPU % | generator CPU % "
    "| other CPU % |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared with ``bench.run``."""
    parser.add_argument("--duration", type=float, default=10, help="seconds of publishing")
    parser.add_argument("--users", type=int, default=20, help="receiving users (default 20)")
    parser.add_argument("--sockets-per-user", type=int, default=1,
                        help="receiver sockets per user; each event reaches all of them")
    parser.add_argument("--idle", type=int, default=0,
                        help="extra idle connections held during the run (default 0)")
    parser.add_argument("--legacy", action="store_true",
                        help="userId-only init (WS_REQUIRE_TOKEN=false) instead of tokens")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m bench.throughput",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("single", "batch", "both"), default="both")
    parser.add_argument("--batch-size", type=int, default=500, help="events per batch request")
    parser.add_argument("--publishers", type=int, default=None,
                        help="concurrent publishing connections (default 4 single, 2 batch)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    modes = ("single", "batch") if args.mode == "both" else (args.mode,)
    results = []
    for mode in modes:
        publishers = args.publishers or (4 if mode == "single" else 2)
        result = run(mode, args.batch_size, publishers, args.duration, args.users,
                     args.sockets_per_user, args.idle, args.legacy)
        save_result(f"throughput-{mode}", result)
        results.append(result)
    print("\n" + format_table(results))
    return results


if __name__ == "__main__":
    main()
