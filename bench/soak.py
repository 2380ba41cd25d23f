"""The soak: 10,000 sockets held for 30 minutes under churn and a steady publisher (issue 12).

One server (the Procfile's command, one gevent worker, Redis broker unless
``--broker memory``), 10,000 browser-like clients (deflate offered, token
init, pongs) held for the whole run; the oldest is replaced by a new user at
``--churn`` connections a second (half of them drop the TCP connection with
a reset, as a killed tab does, half close it normally); a publisher posts
``--rate`` events a second to users that are held. Every ``--every`` seconds
the worker reports, from inside (``bench/soaktrace``), its RSS, open file
descriptors, greenlets and tracked objects; after the warm-up these must stay
flat.

    .venv/bin/python -m bench.soak                          # 30 min, as issue 12 asks
    .venv/bin/python -m bench.soak --minutes 3 --held 2000  # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import struct
import tempfile
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

import gevent
from gevent import socket

from bench.harness import (
    CpuMeter,
    Publisher,
    init_payload,
    quiet_generator_gc,
    raise_fd_limit,
    save_result,
    start_bench_server,
    worker_pid,
)
from bench.rawws import RawClient
from bench.storm import DurableRedis

logger = logging.getLogger("bench.soak")

HOST = "127.0.0.1"
#: Replacements (connect + init) allowed to wait for the server at once.
MAX_IN_FLIGHT = 200
#: Publishers posting side by side (keep-alive connections).
PUBLISH_LANES = 4
TRACE_PATH = Path(__file__).resolve().parent / "soaktrace"


class Counters:
    """What the generator saw."""

    def __init__(self) -> None:
        self.frames = 0
        self.opened = 0
        self.open_errors = 0
        self.closed_by_server = 0
        self.published = 0
        self.replaced = 0
        self.publish_errors: dict[str, int] = {}

    def on_text(self, text: str, at: float) -> None:
        self.frames += 1


def open_client(port: int, email: str, counters: Counters) -> RawClient | None:
    client = RawClient()
    try:
        client.open(HOST, port, init_payload(email, legacy=False), 30)
    except Exception as error:  # noqa: BLE001 - counted, the soak goes on
        counters.open_errors += 1
        logger.debug("open failed: %s", error)
        client.close()
        return None
    counters.opened += 1
    client.start_reading(counters.on_text)
    return client


def drop(client: RawClient, reset: bool) -> None:
    """Close like a browser tab: a reset (killed tab) or a plain FIN."""
    if reset and client.sock is not None:
        with contextlib.suppress(OSError):
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


def run(held: int, minutes: float, churn: float, rate: float, every: float, broker: str,
        concurrency: int) -> dict[str, Any]:
    quiet_generator_gc()
    raise_fd_limit(held + 3000)
    handle, trace_name = tempfile.mkstemp(prefix="callwire-soak-", suffix=".log")
    os.close(handle)
    trace = Path(trace_name)
    workdir = tempfile.TemporaryDirectory(prefix="callwire-soak-redis-")
    store = None
    overrides = {"PYTHONPATH": str(TRACE_PATH), "CALLWIRE_BENCH_SOAK_LOG": trace_name,
                 "CALLWIRE_BENCH_SOAK_EVERY": str(every),
                 # Every client here comes from 127.0.0.1; real ones come from many addresses.
                 "WS_MAX_PENDING_PER_ADDRESS": "100000"}
    if broker == "redis":
        store = DurableRedis(Path(workdir.name), extra=["--appendonly", "no"]).start()
        overrides["REDIS_URL"] = store.url
    server = start_bench_server(overrides)
    counters = Counters()
    clients: deque[tuple[str, RawClient]] = deque()
    background: list[gevent.Greenlet] = []
    samples: list[dict[str, Any]] = []
    loads: list[str] = [Path("/proc/loadavg").read_text().strip()]
    serial = 0
    try:
        pid = worker_pid(server)
        logger.info("server on %d, worker %d; opening %d sockets", server.port, pid, held)
        started = time.monotonic()

        def new_email() -> str:
            nonlocal serial
            serial += 1
            return f"soak-{serial}@bench.local"

        pending = [new_email() for _ in range(held)]
        while pending:
            batch, pending = pending[:concurrency], pending[concurrency:]
            jobs = [gevent.spawn(open_client, server.port, email, counters) for email in batch]
            gevent.joinall(jobs)
            for email, job in zip(batch, jobs, strict=True):
                if job.value is not None:
                    clients.append((email, job.value))
        logger.info("%d sockets open after %.1f s", len(clients), time.monotonic() - started)

        in_flight = [0]
        skipped = [0]

        def churner() -> None:
            """Replace the oldest socket by a new user, ``churn`` times a second.

            The oldest is dropped once its replacement is connected, so the
            held count never dips; when the server cannot keep up, at most
            MAX_IN_FLIGHT replacements wait and the ticks beyond are skipped
            (counted: the churn achieved is reported, not assumed).
            """
            n = 0
            t0 = time.monotonic()
            while True:
                n += 1
                gevent.sleep(max(0.0, t0 + n / churn - time.monotonic()))
                if in_flight[0] >= MAX_IN_FLIGHT:
                    skipped[0] += 1
                    continue
                in_flight[0] += 1
                gevent.spawn(_replace, new_email(), n % 2 == 0)

        def _replace(email: str, reset: bool) -> None:
            try:
                client = open_client(server.port, email, counters)
            finally:
                in_flight[0] -= 1
            if client is None:
                return
            clients.append((email, client))
            _, oldest = clients.popleft()
            if not oldest.alive:
                counters.closed_by_server += 1
            drop(oldest, reset)
            counters.replaced += 1

        def publisher(lane: int) -> None:
            """One of PUBLISH_LANES keep-alive publishers, each at rate / PUBLISH_LANES: a
            single one waits for every answer and fell far behind 200/s on a busy worker."""
            post = Publisher(server.port, server.api_key)
            n = lane
            t0 = time.monotonic()
            while True:
                n += PUBLISH_LANES
                gevent.sleep(max(0.0, t0 + n / rate - time.monotonic()))
                if not clients:
                    continue
                email = clients[random.randrange(len(clients))][0]
                try:
                    status, _ = post.post({"callId": f"soak-{n}", "userId": email,
                                           "status": "ringing"})
                    key = str(status)
                except Exception as error:  # noqa: BLE001 - counted, the soak goes on
                    key = type(error).__name__
                    post.close()
                if key == "200":
                    counters.published += 1
                else:
                    counters.publish_errors[key] = counters.publish_errors.get(key, 0) + 1

        generator_lag = {"max": 0.0}
        spikes: list[tuple[float, float]] = []

        def lag_probe() -> None:
            """This generator's own loop lag: how late a 0.1 s sleep wakes up."""
            while True:
                asked = time.monotonic()
                gevent.sleep(0.1)
                late = time.monotonic() - asked - 0.1
                generator_lag["max"] = max(generator_lag["max"], late)
                if late > 1.0:
                    spikes.append((round((time.monotonic() - soak_started) / 60, 2),
                                   round(late, 2)))

        soak_started = time.monotonic()
        background += [gevent.spawn(churner), gevent.spawn(lag_probe),
                       *(gevent.spawn(publisher, lane) for lane in range(PUBLISH_LANES))]
        meter = CpuMeter(pid)
        seen_lines = 0
        while time.monotonic() - soak_started < minutes * 60:
            gevent.sleep(1.0)
            lines = [line.split() for line in trace.read_text().splitlines()
                     if line.startswith(f"{pid} ")]
            for fields in lines[seen_lines:]:
                seen_lines += 1
                if fields[1] == "error":
                    logger.warning("probe error: %s", " ".join(fields))
                    continue
                sample = {
                    "minute": round((time.monotonic() - soak_started) / 60, 2),
                    "rss_mib": round(int(fields[2]) / 2**20, 1),
                    "fds": int(fields[3]),
                    "greenlets": int(fields[4]),
                    "gc_objects": int(fields[5]),
                    "held": sum(1 for _, c in clients if c.alive),
                    "in_queue": len(clients),
                    "dead_codes": dict(Counter(c.close_code for _, c in clients if not c.alive)),
                    "replaced": counters.replaced,
                    "skipped": skipped[0],
                    "published": counters.published,
                    "frames": counters.frames,
                    "open_errors": counters.open_errors,
                    "server_loop_lag_s": float(fields[6]) if len(fields) > 6 else None,
                    "generator_loop_lag_s": round(generator_lag["max"], 3),
                    **meter.percent(),
                    "loadavg": Path("/proc/loadavg").read_text().split()[0],
                }
                meter.restart()
                generator_lag["max"] = 0.0
                samples.append(sample)
                logger.info("%s", sample)
        loads.append(Path("/proc/loadavg").read_text().strip())
    finally:
        gevent.killall(background, timeout=5)
        for _, client in clients:
            client.close()
        server.stop()
        if store is not None:
            store.stop()
        workdir.cleanup()
    return {
        "held": held, "minutes": minutes, "churn_per_s": churn, "events_per_s": rate,
        "broker": broker, "samples": samples, "replaced": counters.replaced,
        "published": counters.published, "publish_errors": counters.publish_errors,
        "open_errors": counters.open_errors, "closed_by_server": counters.closed_by_server,
        "frames": counters.frames, "loadavg": loads, "server_log": str(server.log_path),
        "generator_lag_spikes_over_1s": spikes,
        "tracebacks": server.log().count("Traceback"),
    }


def render(result: dict[str, Any]) -> str:
    rows = ["| minute | RSS MiB | fds | greenlets | gc objects | held | replaced | churn ticks "
            "skipped | published | loop lag max server / generator s | server CPU % "
            "| generator CPU % | other CPU % | load |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for s in result["samples"]:
        rows.append(f"| {s['minute']} | {s['rss_mib']} | {s['fds']} | {s['greenlets']} "
                    f"| {s['gc_objects']} | {s['held']} | {s['replaced']} | {s['skipped']} "
                    f"| {s['published']} "
                    f"| {s['server_loop_lag_s']} / {s['generator_loop_lag_s']} "
                    f"| {s['server_cpu_percent']} | {s['generator_cpu_percent']} "
                    f"| {s['other_cpu_percent']} | {s['loadavg']} |")
    rows.append("")
    rows.append(f"publish errors {result['publish_errors']}, open errors "
                f"{result['open_errors']}, sockets closed by the server "
                f"{result['closed_by_server']}, tracebacks {result['tracebacks']}, "
                f"generator lag spikes over 1 s (minute, s) "
                f"{result['generator_lag_spikes_over_1s']}, load {result['loadavg']}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--held", type=int, default=10000)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--churn", type=float, default=200.0, help="replacements per second")
    parser.add_argument("--rate", type=float, default=200.0, help="events per second")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--broker", choices=("redis", "memory"), default="redis")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--name", default="soak")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = run(args.held, args.minutes, args.churn, args.rate, args.every, args.broker,
                 args.concurrency)
    path = save_result(args.name, result)
    print(render(result))
    print(f"figures: {path}")
    return result


if __name__ == "__main__":
    main()
