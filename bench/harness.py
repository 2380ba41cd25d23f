"""What every benchmark needs: file limits, the real server, its worker's RSS and CPU,
a cheap keep-alive publisher and percentiles.

The server is started exactly as the tests start it (``tests.support.server``:
the Procfile's gunicorn command on a free 127.0.0.1 port, development mode),
so a benchmark measures what production runs.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
from gevent import socket

from tests.support.server import LiveServer, start_server
from tests.support.tokens import emulator_token

RESULTS = Path(__file__).resolve().parent / "results"
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft open-file limit (children inherit it); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < wanted:
        raise SystemExit(
            f"bench: the open-file limit is {soft} (hard {hard}) but this run needs about "
            f"{wanted}; raise the hard limit (ulimit -Hn) or use fewer connections."
        )
    return soft


def quiet_generator_gc() -> None:
    """Keep this process's own collector out of the figures: its pauses would look like
    the server's. Runs are short and bounded, so the garbage is bounded too."""
    gc.collect()
    gc.freeze()
    gc.disable()


def start_bench_server(overrides: dict[str, str] | None = None) -> LiveServer:
    """Start the Procfile's server in development mode, as the tests do (log in test-artifacts/).

    ``BENCH_LOG_LEVEL`` changes the server's LOG_LEVEL (default INFO).
    """
    settings = {
        # INFO, as production logs: two lines per connection are part of its cost.
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "INFO"),
        **(overrides or {}),
    }
    return start_server(settings, name="bench")


def worker_pid(server: LiveServer) -> int:
    """Return the pid of the (single) gunicorn worker of ``server``."""
    master = server.process.pid
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise RuntimeError("gunicorn started no worker")


@dataclass(frozen=True)
class ProcessSample:
    """RSS and CPU time of a process at one moment."""

    rss_bytes: int
    cpu_seconds: float
    at: float


def sample_process(pid: int) -> ProcessSample:
    """Read RSS and user+system CPU time of ``pid`` from /proc."""
    with open(f"/proc/{pid}/statm") as statm:
        rss_pages = int(statm.read().split()[1])
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS
    return ProcessSample(rss_pages * _PAGE, cpu, time.monotonic())


def machine_busy_seconds() -> float:
    """CPU seconds spent busy by every core since boot (/proc/stat), to spot other load."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICKS


class CpuMeter:
    """Percent of one core used by the server worker, by this generator and by everything
    else on the machine (other people's tests skew figures: the README reports it)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.restart()

    def restart(self) -> None:
        """Start a new interval now."""
        self._server = sample_process(self.pid).cpu_seconds
        self._own = own_cpu_seconds()
        self._machine = machine_busy_seconds()
        self._at = time.monotonic()

    def percent(self) -> dict[str, float]:
        """CPU percent of one core since :meth:`restart`: server, generator, others."""
        elapsed = max(time.monotonic() - self._at, 1e-6)
        server = sample_process(self.pid).cpu_seconds - self._server
        own = own_cpu_seconds() - self._own
        others = machine_busy_seconds() - self._machine - server - own
        return {
            "server_cpu_percent": round(100 * server / elapsed, 1),
            "generator_cpu_percent": round(100 * own / elapsed, 1),
            "other_cpu_percent": round(100 * max(0.0, others) / elapsed, 1),
        }


def wait_for_quiet_machine(max_wait: float, threshold_percent: float = 15.0) -> float:
    """Wait (at most ``max_wait`` s) until the machine is idle for 2 s; return its busy percent.

    Other people's test runs on a shared box skew every figure; the result
    records the load seen, and this lets a run start in a quiet moment.
    """
    deadline = time.monotonic() + max_wait
    while True:
        before, started = machine_busy_seconds(), time.monotonic()
        gevent.sleep(2.0)
        busy = 100 * (machine_busy_seconds() - before) / (time.monotonic() - started)
        if busy <= threshold_percent or time.monotonic() >= deadline:
            return round(busy, 1)


def own_cpu_seconds() -> float:
    """User+system CPU time of this (load generator) process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def init_payload(email: str, legacy: bool) -> dict[str, Any]:
    """The init payload a browser sends: an emulator ID token, or the seed's bare userId."""
    if legacy:
        return {"userId": email}
    return {"userId": email, "token": emulator_token(email, ttl=6 * 3600)}


class Publisher:
    """A keep-alive HTTP/1.1 client for ``POST /api/v6/call/events``, cheap on CPU.

    ``requests`` costs more CPU per call than the server's own handling of a
    publish; this writes the request bytes itself and reads one
    Content-Length answer, so the load generator is never the bottleneck.
    """

    PATH = "/api/v6/call/events"

    def __init__(self, port: int, api_key: str, timeout: float = 30.0) -> None:
        self.port = port
        self.api_key = api_key
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self._last_used = 0.0

    def post(self, body: Any) -> tuple[int, Any]:
        """POST ``body`` as JSON; return (status code, decoded answer)."""
        data = json.dumps(body, separators=(",", ":")).encode()
        head = (
            f"POST {self.PATH} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"X-API-Key: {self.api_key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode()
        # gunicorn closes keep-alive connections idle for 5 s: reconnect before that.
        if self._sock is None or time.monotonic() - self._last_used > 3:
            self._connect()
        with gevent.Timeout(self.timeout, TimeoutError("publish answer took too long")):
            self._sock.sendall(head + data)
            status, headers, answer = self._read_response()
        self._last_used = time.monotonic()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, json.loads(answer) if answer else None

    def _connect(self) -> None:
        self.close()
        self._sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = bytearray()

    def _fill(self) -> None:
        chunk = self._sock.recv(262144)
        if not chunk:
            raise ConnectionError("server closed the publish connection")
        self._buffer += chunk

    def _read_response(self) -> tuple[int, dict[str, str], bytes]:
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            self._fill()
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" not in headers:
            raise ConnectionError(f"answer without Content-Length: {headers}")
        length = int(headers["content-length"])
        while len(self._buffer) < length:
            self._fill()
        body = bytes(self._buffer[:length])
        del self._buffer[:length]
        return status, headers, body

    def close(self) -> None:
        """Close the connection (the next post reconnects)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def percentiles(values_seconds: list[float]) -> dict[str, float | int]:
    """Summarise latencies in milliseconds: count, p50, p90, p99, max, mean."""
    if not values_seconds:
        return {"count": 0}
    ordered = sorted(values_seconds)

    def pick(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000

    return {
        "count": len(ordered),
        "p50_ms": round(pick(0.50), 2),
        "p90_ms": round(pick(0.90), 2),
        "p99_ms": round(pick(0.99), 2),
        "max_ms": round(ordered[-1] * 1000, 2),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2),
    }


def save_result(name: str, result: dict[str, Any]) -> Path:
    """Write ``result`` to bench/results/<name>.json (ignored by git) and return the path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
