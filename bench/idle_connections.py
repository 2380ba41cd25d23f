"""Idle connections: memory per connection, and delivery latency while they are held.

Starts the real server, opens a few probe sockets, then steps the number of
idle, initialised, browser-like connections (each offers permessage-deflate)
through ``--levels``. At every level it records the worker's RSS and, for
``--hold`` seconds, the publish-to-receive latency of events published with
``POST /api/v6/call/events`` to the probes. Latency is also recorded while
connections are being opened (the ramp) and, at the end, while connections
are replaced (churn), where the collector has most to do; the server's own
collector pauses are logged through ``bench/gctrace``.

    python -m bench.idle_connections --connections 10000
    python -m bench.idle_connections --connections 10000 --gc-tuning off
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
from gevent.pool import Pool

from bench.harness import (
    CpuMeter,
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
from bench.rawws import RawClient

logger = logging.getLogger("bench.idle")

HOST = "127.0.0.1"
#: Put on the server's PYTHONPATH unless --no-trace-gc (see its sitecustomize.py).
GC_TRACE_PATH = Path(__file__).resolve().parent / "gctrace"
#: A call walks through these, so every call the probes see ends and leaves the snapshot.
CALL_STATUSES = ("initiated", "ringing", "in-progress", "ended")


@dataclass
class LatencyRecorder:
    """Publish-to-receive latencies of probe events, grouped by the phase they were sent in."""

    phase: str = "start"
    #: (phase, start, end) in time.monotonic(), which is the same clock in every process.
    windows: list[tuple[str, float, float]] = field(default_factory=list)
    sent: dict[tuple[str, str], tuple[float, str]] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    loop_lag: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    bad_answers: int = 0

    def enter(self, phase: str) -> None:
        """Close the current phase's time window and start ``phase``."""
        now = time.monotonic()
        if self.windows:
            name, began, _ = self.windows[-1]
            self.windows[-1] = (name, began, now)
        self.windows.append((phase, now, float("inf")))
        self.phase = phase

    def on_text(self, text: str, arrived: float) -> None:
        message = json.loads(text)
        entry = self.sent.pop((message.get("callId"), message.get("status")), None)
        if entry is not None:
            sent_at, phase = entry
            self.samples[phase].append(arrived - sent_at)


def probe_stream(port: int, api_key: str, user: str, index: int, interval: float,
                 recorder: LatencyRecorder) -> None:
    """Publish one probe's calls in order, one event every ``interval`` seconds, forever."""
    publisher = Publisher(port, api_key)
    sequence = 0
    next_at = time.monotonic()
    while True:
        call_id = f"probe{index}-call{sequence // len(CALL_STATUSES)}"
        status = CALL_STATUSES[sequence % len(CALL_STATUSES)]
        body = {"callId": call_id, "userId": user, "status": status,
                "data": {"type": "status-update", "customerNumber": "+15550100"}}
        recorder.sent[(call_id, status)] = (time.monotonic(), recorder.phase)
        try:
            code, answer = publisher.post(body)
        except (OSError, TimeoutError) as failure:
            code, answer = None, str(failure)
            publisher.close()
        if code != 200 or answer["data"].get("delivered") != 1:
            recorder.bad_answers += 1
            logger.warning("probe publish answered %s: %s", code, answer)
        sequence += 1
        next_at = max(next_at + interval, time.monotonic())
        gevent.sleep(next_at - time.monotonic())


def watch_loop_lag(recorder: LatencyRecorder, tick: float = 0.01) -> None:
    """Record how late this process's own event loop wakes up (generator saturation)."""
    while True:
        before = time.monotonic()
        gevent.sleep(tick)
        lag = time.monotonic() - before - tick
        if lag > recorder.loop_lag[recorder.phase]:
            recorder.loop_lag[recorder.phase] = lag


def open_idle(port: int, first: int, count: int, concurrency: int, legacy: bool,
              holders: list[RawClient], errors: list[str]) -> None:
    """Open ``count`` idle initialised connections (users idle-<n>), reading in the background."""

    def one(number: int) -> None:
        client = RawClient()
        try:
            client.open(HOST, port, init_payload(f"idle-{number:05d}@bench.local", legacy), 30)
        except Exception as failure:  # noqa: BLE001 - counted and reported, the run goes on
            client.close()
            errors.append(f"{type(failure).__name__}: {failure}")
            return
        client.start_reading()
        holders.append(client)

    pool = Pool(concurrency)
    for number in range(first, first + count):
        pool.spawn(one, number)
    pool.join()


def churn(port: int, holders: list[RawClient], first: int, rate: float, seconds: float,
          concurrency: int, legacy: bool, errors: list[str]) -> tuple[int, int]:
    """Replace the oldest connections with new ones, ``rate`` per second, for ``seconds``.

    Each replaced client just drops its TCP connection (a closed laptop lid,
    a lost network); each new one is a new user. Returns how many were
    replaced, and how many of the replaced ones had been granted deflate.
    """
    pool = Pool(concurrency)
    replaced = deflated = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if holders:
            gone = holders.pop(0)
            deflated += bool(gone.extensions)
            gone.close()
        pool.spawn(open_idle, port, first + replaced, 1, 1, legacy, holders, errors)
        replaced += 1
        gevent.sleep(max(0.0, started + replaced / rate - time.monotonic()))
    pool.join(timeout=30)
    return replaced, deflated


NO_PAUSES = {"collections_gen1": 0, "collections_gen2": 0, "max_pause_ms": 0.0,
             "total_pause_ms": 0.0}


def read_gc_log(path: Path, pid: int, windows: list[tuple[str, float, float]]
                ) -> dict[str, dict[str, Any]]:
    """Sum the worker's logged collections per phase: counts, longest and total pause."""
    found: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        owner, began, generation, took, _ = line.split()
        if int(owner) != pid:
            continue
        for phase, start, end in windows:
            if start <= float(began) < end:
                entry = found.setdefault(phase, dict(NO_PAUSES))
                if generation in ("1", "2"):
                    entry[f"collections_gen{generation}"] += 1
                entry["max_pause_ms"] = round(max(entry["max_pause_ms"], float(took) * 1000), 1)
                entry["total_pause_ms"] = round(entry["total_pause_ms"] + float(took) * 1000, 1)
                break
    return found


def run(connections: int, levels: list[int], probes: int, rate: float, hold: float,
        gc_tuning: str, legacy: bool, concurrency: int, trace_gc: bool = True,
        churn_rate: float = 0.0, churn_seconds: float = 0.0) -> dict[str, Any]:
    """Run the whole scenario against a fresh server and return the figures."""
    quiet_generator_gc()
    raise_fd_limit(connections + probes + 1000)
    overrides = {"GC_TUNING": gc_tuning}
    if legacy:
        overrides["WS_REQUIRE_TOKEN"] = "false"
    gc_log: Path | None = None
    if trace_gc:
        handle, name = tempfile.mkstemp(prefix="callwire-bench-gc-", suffix=".log")
        os.close(handle)
        gc_log = Path(name)
        overrides.update(PYTHONPATH=str(GC_TRACE_PATH), CALLWIRE_BENCH_GC_LOG=name)
    server = start_bench_server(overrides)
    holders: list[RawClient] = []
    probe_clients: list[RawClient] = []
    background: list[gevent.Greenlet] = []
    try:
        pid = worker_pid(server)
        logger.info("server on 127.0.0.1:%d, worker pid %d (py-spy top --pid %d)",
                    server.port, pid, pid)
        recorder = LatencyRecorder()
        for index in range(probes):
            client = RawClient()
            client.open(HOST, server.port, init_payload(f"probe-{index}@bench.local", legacy), 10)
            client.start_reading(recorder.on_text)
            probe_clients.append(client)
        background.append(gevent.spawn(watch_loop_lag, recorder))
        for index, client in enumerate(probe_clients):
            background.append(gevent.spawn(
                probe_stream, server.port, server.api_key, client.user_id, index,
                probes / rate, recorder,
            ))
        gevent.sleep(1.0)  # warm-up: first requests import and cache things
        recorder.samples.clear()

        rows: list[dict[str, Any]] = []
        errors: list[str] = []
        baseline_rss: int | None = None
        for level in levels:
            missing = level - len(holders)
            ramp_seconds = 0.0
            ramp_cpu: dict[str, float] = {}
            if missing > 0:
                recorder.enter(f"ramp->{level}")
                meter = CpuMeter(pid)
                started = time.monotonic()
                open_idle(server.port, len(holders) + len(errors), missing, concurrency, legacy,
                          holders, errors)
                ramp_seconds = time.monotonic() - started
                ramp_cpu = meter.percent()
                gevent.sleep(1.0)  # let the last sessions settle before measuring
            recorder.enter(f"hold {level}")
            meter = CpuMeter(pid)
            gevent.sleep(hold)
            cpu = meter.percent()
            end = sample_process(pid)
            if baseline_rss is None:
                baseline_rss = end.rss_bytes
            held = len(holders)
            row = {
                "level": level,
                "held": held,
                "open_seconds": round(ramp_seconds, 2),
                "open_per_second": round(missing / ramp_seconds) if ramp_seconds else None,
                "server_cpu_ms_per_open": round(
                    ramp_cpu["server_cpu_percent"] * 10 * ramp_seconds / missing, 3)
                if missing > 0 else None,
                "cpu_percent_opening": ramp_cpu,
                "rss_mib": round(end.rss_bytes / 2**20, 1),
                "kib_per_connection": round((end.rss_bytes - baseline_rss) / 1024 / held, 1)
                if held else None,
                "cpu_percent_holding": cpu,
                "latency_holding": percentiles(recorder.samples[f"hold {level}"]),
                "latency_while_opening": percentiles(recorder.samples.get(f"ramp->{level}", [])),
                "generator_max_loop_lag_ms": round(1000 * max(
                    recorder.loop_lag[f"hold {level}"],
                    recorder.loop_lag.get(f"ramp->{level}", 0.0)), 1),
            }
            rows.append(row)
            logger.info("level %d: %s", level, json.dumps(row))
        churned: dict[str, Any] | None = None
        replaced = deflated = 0
        if churn_rate > 0 and churn_seconds > 0:
            recorder.enter("churn")
            meter = CpuMeter(pid)
            before = sample_process(pid)
            replaced, deflated = churn(
                server.port, holders, len(holders) + len(errors) + 1_000_000, churn_rate,
                churn_seconds, concurrency, legacy, errors)
            gevent.sleep(1.0)
            after = sample_process(pid)
            churned = {
                "replaced": replaced,
                "per_second": churn_rate,
                "seconds": churn_seconds,
                "held_after": len(holders),
                "rss_mib_after": round(after.rss_bytes / 2**20, 1),
                "rss_growth_mib": round((after.rss_bytes - before.rss_bytes) / 2**20, 1),
                # A leak shows here: objects of closed connections that never die.
                "rss_growth_kib_per_replaced": round(
                    (after.rss_bytes - before.rss_bytes) / 1024 / max(replaced, 1), 2),
                "latency": percentiles(recorder.samples["churn"]),
                "cpu_percent": meter.percent(),
            }
            logger.info("churn: %s", json.dumps(churned))
        recorder.enter("done")
        if gc_log is not None:
            pauses = read_gc_log(gc_log, pid, recorder.windows)
            for row in rows:
                row["gc_holding"] = pauses.get(f"hold {row['level']}", NO_PAUSES)
                row["gc_while_opening"] = pauses.get(f"ramp->{row['level']}", NO_PAUSES)
            if churned is not None:
                churned["gc"] = pauses.get("churn", NO_PAUSES)
        deflate_accepted = deflated + sum(1 for c in holders + probe_clients if c.extensions)
        closed_by_server = sum(1 for c in holders + probe_clients if not c.alive)
        return {
            "scenario": "idle_connections",
            "gc_tuning": gc_tuning,
            "gc_traced": trace_gc,
            "auth": "legacy userId" if legacy else "emulator ID token",
            "probes": probes,
            "probe_rate_per_second": rate,
            "hold_seconds": hold,
            "deflate_offered": len(holders) + len(probe_clients) + replaced,
            "deflate_accepted": deflate_accepted,
            "closed_by_server_during_run": closed_by_server,
            "open_errors": len(errors),
            "open_error_examples": errors[:5],
            "bad_publish_answers": recorder.bad_answers,
            "generator_cpu_seconds": round(own_cpu_seconds(), 1),
            "levels": rows,
            "churn": churned,
        }
    finally:
        for greenlet in background:
            greenlet.kill(block=False)
        server.stop()
        for client in holders + probe_clients:
            client.close()
        if gc_log is not None:
            gc_log.unlink(missing_ok=True)


def format_table(result: dict[str, Any]) -> str:
    """Return the figures as a Markdown table (as pasted into bench/README.md)."""

    def pauses(stats: dict[str, Any] | None) -> str:
        if stats is None:
            return "not traced"
        return f"{stats['collections_gen2']}, {stats['max_pause_ms']}"

    def trio(stats: dict[str, Any]) -> str:
        if not stats.get("count"):
            return "-"
        return f"{stats['p50_ms']} / {stats['p99_ms']} / {stats['max_ms']} (n={stats['count']})"

    lines = [
        f"idle connections, GC_TUNING={result['gc_tuning']}, {result['auth']}, "
        f"{result['probes']} probes at {result['probe_rate_per_second']:g} events/s; "
        f"deflate offered {result['deflate_offered']}, accepted {result['deflate_accepted']}; "
        f"open errors {result['open_errors']}; closed by server "
        f"{result['closed_by_server_during_run']}",
        "",
        "| held | open time | RSS MiB | KiB/conn | holding: p50 / p99 / max ms "
        "| while opening: p50 / p99 / max ms | server gc: full collections, longest pause ms "
        "(holding; opening) | server CPU % holding | other CPU % | generator lag ms |",
        "|---:|---:|---:|---:|---|---|---|---:|---:|---:|",
    ]
    for row in result["levels"]:
        opened = f"{row['open_seconds']} s" if row["open_seconds"] else "-"
        cpu = row["cpu_percent_holding"]
        others = max(cpu["other_cpu_percent"],
                     row["cpu_percent_opening"].get("other_cpu_percent", 0.0))
        lines.append(
            f"| {row['held']} | {opened} | {row['rss_mib']} | {row['kib_per_connection'] or '-'} "
            f"| {trio(row['latency_holding'])} | {trio(row['latency_while_opening'])} "
            f"| {pauses(row.get('gc_holding'))}; {pauses(row.get('gc_while_opening'))} "
            f"| {cpu['server_cpu_percent']} | {others} | {row['generator_max_loop_lag_ms']} |"
        )
    churned = result.get("churn")
    if churned:
        gc_note = churned.get("gc")
        lines += [
            "",
            f"churn with {churned['held_after']} held: {churned['replaced']} connections "
            f"replaced at {churned['per_second']:g}/s; latency p50 / p99 / max "
            f"{trio(churned['latency'])}; server gc: full collections, longest pause ms "
            f"{pauses(gc_note)}; RSS {churned['rss_mib_after']} MiB "
            f"({churned['rss_growth_mib']:+} MiB, {churned['rss_growth_kib_per_replaced']} KiB "
            f"per replaced connection); other CPU "
            f"{churned['cpu_percent']['other_cpu_percent']} %",
        ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.idle_connections",
                                     description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return parser.parse_args(argv)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared with ``bench.run``."""
    parser.add_argument("--connections", type=int, default=10_000,
                        help="idle connections at the last level (default 10000)")
    parser.add_argument("--levels", default=None,
                        help="comma list of idle levels (default 0,1000,5000,CONNECTIONS)")
    parser.add_argument("--probes", type=int, default=4, help="probe sockets (default 4)")
    parser.add_argument("--rate", type=float, default=100,
                        help="probe events per second, all probes together (default 100)")
    parser.add_argument("--hold", type=float, default=8, help="seconds measured per level")
    parser.add_argument("--gc-tuning", choices=("on", "off"), default="on",
                        help="GC_TUNING for the server: gc.freeze() + raised thresholds")
    parser.add_argument("--legacy", action="store_true",
                        help="userId-only init (WS_REQUIRE_TOKEN=false) instead of tokens")
    parser.add_argument("--concurrency", type=int, default=100,
                        help="handshakes in flight while opening (default 100)")
    parser.add_argument("--churn-rate", type=float, default=200,
                        help="after the last level, connections replaced per second (default 200)")
    parser.add_argument("--churn-seconds", type=float, default=20,
                        help="how long the churn lasts; 0 skips it (default 20)")
    parser.add_argument("--no-trace-gc", dest="trace_gc", action="store_false",
                        help="do not log the server's collector pauses (bench/gctrace)")


def levels_for(connections: int, raw: str | None) -> list[int]:
    """Return the idle levels to measure, ascending, ending at ``connections``."""
    if raw:
        return sorted({int(x) for x in raw.split(",")})
    return sorted({level for level in (0, 1000, 5000) if level < connections} | {connections})


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    result = run(args.connections, levels_for(args.connections, args.levels), args.probes,
                 args.rate, args.hold, args.gc_tuning, args.legacy, args.concurrency,
                 args.trace_gc, args.churn_rate, args.churn_seconds)
    path = save_result(f"idle_connections-gc-{args.gc_tuning}", result)
    print("\n" + format_table(result))
    print(f"\nfull figures: {path}")
    return result


if __name__ == "__main__":
    main()
