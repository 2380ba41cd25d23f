import time, json, gevent, sys
from bench.harness import *
from bench.rawws import RawClient
s = start_bench_server()
try:
    c = RawClient(); c.open("127.0.0.1", s.port, init_payload("p@b.local", False), 10)
    got = {}
    c.start_reading(lambda t, at: got.__setitem__(json.loads(t)["callId"], at))
    p = Publisher(s.port, s.api_key)
    for gap in (0.2, 0.04, 0.01, 0.002):
        rtts=[]; lats=[]
        for i in range(60):
            cid=f"c{gap}-{i}"
            t0 = time.monotonic()
            code, ans = p.post({"callId": cid, "userId": "p@b.local", "status": "initiated", "data": {}})
            t1 = time.monotonic()
            gevent.sleep(gap)
            rtts.append(t1-t0); lats.append(got.get(cid, 9)-t0)
        print(gap, "rtt", percentiles(rtts), "\n   lat", percentiles(lats))
finally:
    s.stop()
