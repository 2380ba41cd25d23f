"""CPU per init and per socket closed on SIGTERM, Callwire next to the bare floor (issue 12).

The deploy storm (``bench.storm``) is bounded by two per-socket costs on one
core: what a new worker spends to take a socket from TCP accept to
``connected`` (handshake, Flask dispatch, token check, history read), and
what a stopping worker spends to close each socket with 1012. This measures
both in isolation, from ``/proc`` (the worker's user+system time):

- init: N browser-like clients (deflate offered, init with an emulator token)
  open with ``--concurrency`` handshakes in flight; worker CPU over the
  opening divided by N;
- shutdown (Callwire only): SIGTERM to the server's process group while the
  N are held; worker CPU from SIGTERM to its exit divided by N (sampled every
  10 ms: the last sample before the exit is the figure), the seconds to exit,
  and the close codes the clients read.

The bare flask-sock server (``bench/peers/bare.py``: handshake, read one
init, answer ``connected``) is the floor for an init on this stack. Callwire
runs with the storm's broker (Redis with ``appendfsync always``).
``--profile DIR`` records both phases of Callwire's worker with py-spy
(``python -m bench.profile_top`` reads them).

    .venv/bin/python -m bench.socket_cost --clients 5000
    git archive 8dbeb81 | tar -x -C /tmp/before
    .venv/bin/python -m bench.socket_cost --servers bare,before,callwire --before /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import gevent
from gevent.pool import Pool

from bench.harness import (
    init_payload,
    own_cpu_seconds,
    quiet_generator_gc,
    raise_fd_limit,
    sample_process,
    save_result,
    start_bench_server,
    worker_pid,
)
from bench.rawws import RawClient
from bench.side_by_side import start_checkout, start_peer

HOST = "127.0.0.1"
#: The servers that are Callwire (``before``: another checkout, ``--before``).
CALLWIRE = ("before", "callwire")


def open_clients(port: int, prefix: str, count: int, concurrency: int) -> list[RawClient]:
    """Open and identify ``count`` clients, each then reading in its own greenlet."""
    clients: list[RawClient] = []

    def one(number: int) -> None:
        client = RawClient()
        try:
            client.open(HOST, port, init_payload(f"{prefix}-{number}@bench.local", False), 60)
        except Exception:  # noqa: BLE001 - counted below as missing
            client.close()
            return
        client.start_reading()
        # A browser answers a close frame and the server then ends the TCP connection;
        # closing at once is as fast as a peer can answer.
        client.reader.link(lambda _reader, client=client: client.sock.close())
        clients.append(client)

    pool = Pool(concurrency)
    for number in range(count):
        pool.spawn(one, number)
    pool.join()
    return clients


def _profile(pid: int, path: Path, seconds: float) -> subprocess.Popen:
    py_spy = Path(sys.executable).parent / "py-spy"
    return subprocess.Popen([str(py_spy), "record", "--pid", str(pid), "--rate", "250",
                             "--duration", str(int(seconds)), "--format", "raw",
                             "--nonblocking", "-o", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure_init(pid: int, port: int, name: str, clients: int, concurrency: int,
                 profile: Path | None) -> tuple[dict[str, Any], list[RawClient]]:
    spy = _profile(pid, profile / f"{name}-init.txt", 600) if profile else None
    cpu_before, own_before = sample_process(pid).cpu_seconds, own_cpu_seconds()
    started = time.monotonic()
    held = open_clients(port, f"cost-{name}-{int(time.time())}", clients, concurrency)
    elapsed = time.monotonic() - started
    cpu = sample_process(pid).cpu_seconds - cpu_before
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    return {
        "opened": len(held),
        "seconds": round(elapsed, 2),
        "worker_cpu_s": round(cpu, 2),
        "worker_cpu_ms_per_init": round(1000 * cpu / max(1, len(held)), 3),
        "generator_cpu_ms_per_init": round(
            1000 * (own_cpu_seconds() - own_before) / max(1, len(held)), 3),
        "inits_per_s": round(len(held) / elapsed, 1),
    }, held


def measure_shutdown(server: Any, pid: int, held: list[RawClient],
                     profile: Path | None) -> dict[str, Any]:
    """SIGTERM the server; worker CPU until it exits, per socket held."""
    spy = _profile(pid, profile / "callwire-shutdown.txt", 60) if profile else None
    if spy is not None:
        gevent.sleep(1.0)  # py-spy attaches
    last = sample_process(pid)
    before = last.cpu_seconds
    started = time.monotonic()
    os.killpg(server.process.pid, signal.SIGTERM)
    trace = []
    while True:
        try:
            last = sample_process(pid)
        except (OSError, IndexError):
            break
        trace.append((round(last.at - started, 2), round(last.cpu_seconds - before, 2),
                      _user_system(pid)))
        gevent.sleep(0.01)
    gone = time.monotonic() - started
    gevent.sleep(0.5)
    codes = Counter(str(c.close_code) for c in held)
    if spy is not None:
        spy.wait(30)
    return {
        "sockets": len(held),
        "worker_exit_s": round(gone, 2),
        "worker_cpu_s": round(last.cpu_seconds - before, 2),
        "worker_cpu_ms_per_socket": round(1000 * (last.cpu_seconds - before) / len(held), 3),
        "close_codes_seen": dict(codes),
        "tracebacks": server.log().count("Traceback"),
        "cpu_trace": trace[:: max(1, len(trace) // 40)] + trace[-3:],
    }


def _user_system(pid: int) -> tuple[int, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def run(clients: int, concurrency: int, servers: list[str],
        profile: Path | None, before: Path | None = None) -> dict[str, Any]:
    from bench.storm import DurableRedis

    raise_fd_limit(clients + 1000)
    quiet_generator_gc()
    result: dict[str, Any] = {"clients": clients, "concurrency": concurrency,
                              "load_before": os.getloadavg()}
    if profile:
        profile.mkdir(parents=True, exist_ok=True)
    for name in servers:
        with tempfile.TemporaryDirectory(prefix="callwire-cost-") as workdir:
            store = DurableRedis(Path(workdir)).start() if name in CALLWIRE else None
            env = {"REDIS_URL": store.url, "WS_MAX_PENDING_PER_ADDRESS": "100000"} if store else {}
            if name == "before":
                server = start_checkout(before, env)
            elif name == "callwire":
                server = start_bench_server(env)
            else:
                server = start_peer(name)
            held: list[RawClient] = []
            try:
                pid = worker_pid(server)
                init, held = measure_init(pid, server.port, name, clients, concurrency,
                                          profile if name == "callwire" else None)
                result[name] = {"init": init}
                if name in CALLWIRE:
                    result[name]["shutdown"] = measure_shutdown(
                        server, pid, held, profile if name == "callwire" else None)
            finally:
                for client in held:
                    client.close()
                server.stop()
                if store is not None:
                    store.stop()
    result["load_after"] = os.getloadavg()
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.socket_cost",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--servers", default="bare,callwire")
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--before", type=Path, default=None,
                        help="a checkout of Callwire run as server 'before' (its Procfile)")
    parser.add_argument("--name", default="socket_cost")
    args = parser.parse_args(argv)
    result = run(args.clients, args.concurrency, args.servers.split(","), args.profile,
                 args.before)
    path = save_result(args.name, result)
    print(json.dumps(result, indent=1))
    print(f"figures: {path}")
    return result


if __name__ == "__main__":
    main()
