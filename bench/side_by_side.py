"""Callwire against its peers, side by side in one run, driven by the same load generator.

Three servers, each under gunicorn with one gevent worker, one after the
other on this machine:

- ``bare``: a flask-sock app that only parses the POST body and writes it to
  the user's sockets (``bench/peers/bare.py``): the floor;
- ``socketio``: Flask-SocketIO 5.x serving the same events to socket.io
  clients (``bench/peers/socketio_app.py``; ``pip install -r bench/requirements.txt``);
- ``callwire``: the service itself, as the Procfile runs it.

Against each: ``--users`` receivers with one socket each, then ``--publishers``
keep-alive publishers posting as fast as answers come, one event per POST
and then ``--batch-size`` events per POST; then ``--idle`` idle sockets are
opened and the worker's background CPU is read for ``--idle-seconds``
(pings, collector, presence); then events are published at a fixed
``--rate`` while those idle sockets are held. Server CPU is the worker's
user+system time from ``/proc`` before and after each window, divided by
the events accepted in it. Every accepted event must reach its socket
(received/expected).

    python -m bench.side_by_side                        # all three, about 6 min
    python -m bench.side_by_side --servers bare,callwire --idle 2000 --duration 5
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gevent
import requests
from gevent.pool import Pool

from bench.harness import (
    Publisher,
    init_payload,
    own_cpu_seconds,
    percentiles,
    quiet_generator_gc,
    raise_fd_limit,
    sample_process,
    save_result,
    start_bench_server,
    worker_pid,
)
from bench.rawws import RawClient, SocketIOClient
from bench.throughput import Tally, event_stream, publish_loop
from tests.support.net import free_port, wait_for_port
from tests.support.server import ARTIFACTS, BASE_ENV, ROOT, LiveServer

logger = logging.getLogger("bench.side_by_side")

HOST = "127.0.0.1"
API_KEY = "test-events-key"
PEERS = {"bare": "bench.peers.bare:app", "socketio": "bench.peers.socketio_app:app"}
SERVERS = ("bare", "socketio", "before", "callwire")


def start_peer(name: str) -> LiveServer:
    """Start a peer under gunicorn's gevent worker, one worker, as the Procfile runs Callwire."""
    port = free_port()
    env = {**os.environ, "EVENTS_API_KEY": API_KEY,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / f"bench-peer-{name}-{port}-{int(time.time() * 1000)}.log"
    command = [
        "gunicorn", "--worker-class", "gevent", "--bind", f"{HOST}:{port}", "--workers", "1",
        "--worker-connections", "20000", "--no-control-socket", "--pythonpath", str(ROOT),
        PEERS[name],
    ]
    with open(log_path, "wb") as log_file:
        # Run from bench/peers/ so gunicorn does not load Callwire's gunicorn.conf.py.
        process = subprocess.Popen(command, cwd=Path(__file__).parent / "peers", env=env,
                                   stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = LiveServer(port, env, process, log_path, API_KEY)
    try:
        wait_for_port(port)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{server.http}/healthz", timeout=1).status_code == 200:
                    return server
            except requests.RequestException:
                time.sleep(0.05)
        raise RuntimeError(f"peer {name} did not start:\n{server.log()}")
    except Exception:
        server.stop()
        raise


def start_checkout(root: Path, overrides: dict[str, str] | None = None) -> LiveServer:
    """Start Callwire from another checkout (``--before``): its Procfile, this venv."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "WEB_CONC"))}
    env.update(BASE_ENV)
    env.update({"PORT": str(port), "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "INFO"),
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                **(overrides or {})})
    procfile = (root / "Procfile").read_text()
    command = procfile.split("web:", 1)[1].strip().replace("0.0.0.0:", "127.0.0.1:")
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / f"bench-before-{port}-{int(time.time() * 1000)}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(["sh", "-c", f"exec {command}"], cwd=root, env=env,
                                   stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = LiveServer(port, env, process, log_path, env["EVENTS_API_KEY"])
    try:
        wait_for_port(port)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{server.http}/healthz", timeout=1).status_code == 200:
                    return server
            except requests.RequestException:
                time.sleep(0.05)
        raise RuntimeError(f"callwire from {root} did not start:\n{server.log()}")
    except Exception:
        server.stop()
        raise


def client_class(name: str) -> type[RawClient]:
    return SocketIOClient if name == "socketio" else RawClient


def connect_all(name: str, port: int, emails: list[str], concurrency: int,
                on_text: Any = None) -> tuple[list[RawClient], list[str]]:
    """Open and identify one socket per email (browser-like: deflate offered); read each."""
    clients: list[RawClient] = []
    errors: list[str] = []
    kind = client_class(name)

    def one(email: str) -> None:
        client = kind()
        try:
            client.open(HOST, port, init_payload(email, False), 60)
        except Exception as failure:  # noqa: BLE001 - counted and reported
            client.close()
            errors.append(f"{type(failure).__name__}: {failure}")
            return
        client.start_reading(on_text)
        clients.append(client)

    pool = Pool(concurrency)
    for email in emails:
        pool.spawn(one, email)
    pool.join()
    return clients, errors


def paced_loop(port: int, index: int, users: list[str], rate: float, stop_at: float,
               tally: Tally) -> None:
    """Publish one event per POST at ``rate`` per second (open loop) until ``stop_at``."""
    publisher = Publisher(port, API_KEY)
    events = event_stream(index, users)
    started = time.monotonic()
    sent = 0
    try:
        while True:
            due = started + sent / rate
            # A server that cannot keep up is measured over the same window.
            if due >= stop_at or time.monotonic() >= stop_at:
                break
            gevent.sleep(max(0.0, due - time.monotonic()))
            item = next(events)
            tally.sent[(item["callId"], item["status"])] = time.monotonic()
            code, answer = publisher.post(item)
            sent += 1
            if code == 200 and (answer.get("data") or {}).get("id"):
                tally.accepted += 1
            else:
                tally.refused += 1
    finally:
        publisher.close()


def window(pid: int, tally: Tally, expected_per_event: int, run: Any) -> dict[str, Any]:
    """Run ``run()`` (publishing), wait (bounded) for the frames, return CPU and rates."""
    cpu_before, own_before = sample_process(pid).cpu_seconds, own_cpu_seconds()
    started = time.monotonic()
    run()
    published_for = time.monotonic() - started
    expected = tally.accepted * expected_per_event
    deadline = time.monotonic() + 15
    while tally.received < expected and time.monotonic() < deadline:
        gevent.sleep(0.01)
    cpu = sample_process(pid).cpu_seconds - cpu_before
    elapsed = max(tally.last_received - started, published_for)
    return {
        "events_accepted": tally.accepted,
        "events_refused": tally.refused,
        "frames_expected": expected,
        "frames_received": tally.received,
        "events_per_second": round(tally.accepted / published_for),
        "server_cpu_seconds": round(cpu, 3),
        "server_cpu_us_per_event": round(1e6 * cpu / max(tally.accepted, 1), 1),
        "server_cpu_percent": round(100 * cpu / elapsed, 1),
        "generator_cpu_percent": round(100 * (own_cpu_seconds() - own_before) / elapsed, 1),
        "latency": percentiles(tally.latencies),
    }


def start_profiler(pid: int, duration: float, output: Path) -> subprocess.Popen:
    """Sample the worker with py-spy for ``duration`` s into collapsed stacks (``--profile``)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--duration",
         str(max(1, int(duration))), "--rate", "250", "--format", "raw", "--nonblocking",
         "--output", str(output)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def saturate(port: int, pid: int, users: list[str], batch: int, publishers: int,
             duration: float, tally: Tally, first_index: int,
             profile: Path | None = None) -> dict[str, Any]:
    """Closed-loop publishers, as fast as answers come (``batch`` 0: one event per POST)."""

    def run() -> None:
        stop_at = time.monotonic() + duration
        if profile is not None:
            profiler = start_profiler(pid, duration - 1, profile)
        loops = [gevent.spawn(publish_loop, port, API_KEY, first_index + n, users, batch,
                              stop_at, tally) for n in range(publishers)]
        gevent.joinall(loops, raise_error=True)
        if profile is not None:
            profiler.wait(timeout=30)

    return window(pid, tally, 1, run)


def paced(port: int, pid: int, users: list[str], rate: float, publishers: int,
          duration: float, tally: Tally, first_index: int) -> dict[str, Any]:
    """Open-loop publishers at ``rate`` events/s in total."""

    def run() -> None:
        stop_at = time.monotonic() + duration
        loops = [gevent.spawn(paced_loop, port, first_index + n, users, rate / publishers,
                              stop_at, tally) for n in range(publishers)]
        gevent.joinall(loops, raise_error=True)

    return window(pid, tally, 1, run)


def background(pid: int, seconds: float, profile: Path | None = None) -> dict[str, Any]:
    """The worker's CPU while nothing is published: pings, collector, presence."""
    before, started = sample_process(pid).cpu_seconds, time.monotonic()
    profiler = start_profiler(pid, seconds - 1, profile) if profile is not None else None
    gevent.sleep(seconds)
    cpu = sample_process(pid).cpu_seconds - before
    if profiler is not None:
        profiler.wait(timeout=30)
    elapsed = time.monotonic() - started
    return {"seconds": round(elapsed, 1), "server_cpu_seconds": round(cpu, 3),
            "server_cpu_percent": round(100 * cpu / elapsed, 2)}


def run_server(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every workload against one server; returns its figures."""
    if name == "callwire":
        server = start_bench_server()
    elif name == "before":
        server = start_checkout(Path(args.before))
    else:
        server = start_peer(name)
    clients: list[RawClient] = []
    result: dict[str, Any] = {"server": name}
    try:
        pid = worker_pid(server)
        logger.info("%s on %s:%d, worker pid %d", name, HOST, server.port, pid)
        users = [f"user-{n:04d}@bench.local" for n in range(args.users)]
        tally = Tally()
        receivers, errors = connect_all(name, server.port, users, 100, tally.on_text)
        clients += receivers
        result["receivers"] = len(receivers)
        result["receiver_errors"] = len(errors)
        index = 0
        for label, batch in (("single", 0), ("batch", args.batch_size)):
            saturate(server.port, pid, users, batch, args.publishers, 1.0, tally, index)
            tally.reset()
            index += 100
            profile = (Path(args.profile) / f"{name}-{label}.txt") if args.profile else None
            result[label] = saturate(server.port, pid, users, batch, args.publishers,
                                     args.duration, tally, index, profile)
            tally.reset()
            index += 100
            logger.info("%s %s: %s", name, label, result[label])
        if args.idle:
            opened_at = time.monotonic()
            idle_users = [f"idle-{n:05d}@bench.local" for n in range(args.idle)]
            idle, errors = connect_all(name, server.port, idle_users, 100)
            clients += idle
            result["idle_connections"] = len(idle)
            result["idle_errors"] = len(errors)
            result["idle_open_seconds"] = round(time.monotonic() - opened_at, 1)
            result["idle_rss_mib"] = round(sample_process(pid).rss_bytes / 2**20, 1)
            gevent.sleep(3)  # let the opening burst's work (logs, collector) settle
            profile = (Path(args.profile) / f"{name}-background.txt") if args.profile else None
            result["background"] = background(pid, args.idle_seconds, profile)
            logger.info("%s background: %s", name, result["background"])
        result["paced"] = paced(server.port, pid, users, args.rate, args.publishers,
                                args.duration, tally, index)
        logger.info("%s paced: %s", name, result["paced"])
    finally:
        server.stop()
        for client in clients:
            client.close()
    return result


def load_average() -> str:
    with open("/proc/loadavg") as loadavg:
        return " ".join(loadavg.read().split()[:3])


def print_table(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    by = {r["server"]: r for r in results}
    names = [n for n in SERVERS if n in by]
    floor = by.get("bare")

    def cell(name: str, part: str, key: str) -> str:
        value = by[name].get(part, {}).get(key)
        if value is None:
            return "-"
        text = f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"
        base = floor.get(part, {}).get(key) if floor and name != "bare" else None
        return f"{text} ({value / base:.2f}x)" if base else text

    print("| workload | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    rows = [
        ("one event per POST: server CPU µs/event", "single", "server_cpu_us_per_event"),
        ("one event per POST: events/s", "single", "events_per_second"),
        ("one event per POST: p50 / p99 ms", "single", None),
        (f"{args.batch_size} events per POST: server CPU µs/event", "batch",
         "server_cpu_us_per_event"),
        (f"{args.batch_size} events per POST: events/s", "batch", "events_per_second"),
        (f"{args.rate:g} events/s with {args.idle:,} idle: server CPU µs/event", "paced",
         "server_cpu_us_per_event"),
        (f"{args.rate:g} events/s with {args.idle:,} idle: p50 / p99 ms", "paced", None),
        (f"{args.idle:,} idle sockets: background server CPU %", "background",
         "server_cpu_percent"),
    ]
    for label, part, key in rows:
        if key is None:
            cells = [f"{by[n].get(part, {}).get('latency', {}).get('p50_ms')} / "
                     f"{by[n].get(part, {}).get('latency', {}).get('p99_ms')}" for n in names]
        else:
            cells = [cell(n, part, key) for n in names]
        print(f"| {label} | " + " | ".join(cells) + " |")
    checks = []
    for n in names:
        for part in ("single", "batch", "paced"):
            figures = by[n].get(part, {})
            checks.append(f"{n} {part} {figures.get('frames_received')}/"
                          f"{figures.get('frames_expected')}")
    print("\nreceived/expected: " + ", ".join(checks))
    print("idle RSS MiB: " + ", ".join(f"{n} {by[n].get('idle_rss_mib')}" for n in names))


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m bench.side_by_side",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="bare,socketio,callwire",
                        help="comma list of bare, socketio, before, callwire "
                             "(default bare,socketio,callwire; before needs --before)")
    parser.add_argument("--users", type=int, default=1000, help="receivers, one socket each")
    parser.add_argument("--publishers", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--duration", type=float, default=8, help="seconds per measurement")
    parser.add_argument("--idle", type=int, default=10000, help="idle sockets (0: skip)")
    parser.add_argument("--idle-seconds", type=float, default=30,
                        help="background CPU window (pings come every 25 s)")
    parser.add_argument("--rate", type=float, default=500, help="events/s of the paced part")
    parser.add_argument("--before", metavar="CHECKOUT",
                        help="also run Callwire from this checkout (e.g. a git worktree of "
                             "an older commit) as server 'before', for before/after figures")
    parser.add_argument("--profile", metavar="DIR",
                        help="also sample each worker with py-spy while saturated and while "
                             "idle (collapsed stacks in DIR; python -m bench.profile_top)")
    args = parser.parse_args(argv)
    quiet_generator_gc()
    raise_fd_limit(args.users + args.idle + 1000)
    load_before = load_average()
    results = [run_server(name, args) for name in args.servers.split(",")]
    summary = {"scenario": "side-by-side", "args": vars(args), "load_before": load_before,
               "load_after": load_average(), "results": results}
    save_result("side-by-side", summary)
    print(f"\nload average before {load_before}, after {summary['load_after']}\n")
    print_table(results, args)
    return results


if __name__ == "__main__":
    main()
