import os, signal, sys, time, gevent
import tests.support.server as ts
from bench.harness import *
from bench.idle_connections import open_idle
import tests.support.net as tn
ts.wait_for_port = lambda p: tn.wait_for_port(p, 120)
orig = ts.procfile_command
ts.procfile_command = lambda: orig().replace("--config gunicorn.conf.py", "--config " + os.environ.get("CONF", "/tmp/diag/conf.py") + "")
n = int(sys.argv[1]); trace = sys.argv[2]
open("/tmp/diag/report.txt", "w").close()
env = {"PYTHONTRACEMALLOC": trace} if trace != "0" else {}
env["GC_TUNING"] = os.environ.get("GT", "on")
for kv in os.environ.get("XENV", "").split():
    k, v = kv.split("=", 1); env[k] = v
def vmas(pid):
    return sum(1 for _ in open(f"/proc/{pid}/maps"))
s = start_bench_server(env)
holders = []; errors = []
try:
    pid = worker_pid(s)
    import requests
    for _ in range(600):
        try:
            requests.get(s.http + "/healthz", timeout=1); break
        except Exception: time.sleep(0.2)
    open_idle(s.port, 0, 50, 50, False, holders, errors)
    gevent.sleep(1)
    os.kill(pid, signal.SIGUSR2); gevent.sleep(3 if trace != "0" else 1)
    r0 = sample_process(pid).rss_bytes; v0 = vmas(pid)
    open_idle(s.port, 50, n, 100, False, holders, errors)
    gevent.sleep(2)
    r1 = sample_process(pid).rss_bytes; v1 = vmas(pid)
    os.kill(pid, signal.SIGUSR2); gevent.sleep(40 if trace != "0" else 2)
    print("errors", len(errors), "rss per conn KiB", round((r1 - r0) / 1024 / n, 2), "vmas", v0, v1)
finally:
    s.stop()
    for c in holders: c.close()
