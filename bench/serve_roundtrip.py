#!/usr/bin/env python3
"""Benchmark of `wasmpool serve` over loopback HTTP with keep-alive (stdlib only).

    python3 bench/serve_roundtrip.py WASMPOOL_BINARY TESTKIT_WASM [N]

Starts the real service on 127.0.0.1 port 0 in a temporary state directory, with one tenant
whose rate and queue quotas are out of the way, and measures:
- submit -> result round trip of a tiny task (`POST /v1/tasks?wait=10`, task `add`): p50/p99;
- single-task submissions per second (202 answers, one connection, keep-alive);
- a map's items per second through the NDJSON endpoints (submit, then stream the results).
"""

import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def main():
    binary, wasm = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    tmp = tempfile.mkdtemp(prefix="wasmpool-serve-bench-")
    server = None
    try:
        tenants = os.path.join(tmp, "tenants.toml")
        token = subprocess.check_output(
            [binary, "tenant", "add", "bench", "--tenants", tenants], text=True
        ).strip()
        text = open(tenants).read()
        text = text.replace("rate = 100.0", "rate = 1000000.0")
        text = text.replace("queued = 1000", "queued = 1000000")
        text = text.replace("running = 4", "running = 64")
        open(tenants, "w").write(text)
        server = subprocess.Popen(
            [binary, "serve", "--listen", "127.0.0.1:0", "--tenants", tenants,
             "--state", os.path.join(tmp, "state"), "--workers", "2"],
            stdout=subprocess.PIPE, text=True,
        )
        line = server.stdout.readline().strip()
        host, port = line.removeprefix("listening on http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port))
        auth = {"Authorization": f"Bearer {token}"}

        def call(method, path, body=None, headers=None):
            conn.request(method, path, body=body, headers={**auth, **(headers or {})})
            r = conn.getresponse()
            data = r.read()
            return r.status, data

        status, data = call("POST", "/v1/modules", open(wasm, "rb").read())
        assert status == 201, data
        module = json.loads(data)["sha256"]
        body = json.dumps({"module": module, "task": "add", "args": [2, 3]})
        for _ in range(200):  # warm: the pool starts, caches fill
            status, data = call("POST", "/v1/tasks?wait=10", body)
            assert status == 200, data
        times = []
        for _ in range(n):
            t = time.perf_counter()
            status, data = call("POST", "/v1/tasks?wait=10", body)
            times.append(time.perf_counter() - t)
            assert status == 200 and b'"result":5' in data, data
        times.sort()
        p50 = statistics.median(times) * 1e3
        p99 = times[int(len(times) * 0.99) - 1] * 1e3

        t = time.perf_counter()
        for _ in range(n):
            status, data = call("POST", "/v1/tasks", body)
            assert status == 202, data
        submits = n / (time.perf_counter() - t)

        items = 20000
        ndjson = "".join(f"{i}\n" for i in range(items))
        t = time.perf_counter()
        status, data = call(
            "POST", f"/v1/maps?module={module}&task=square&chunksize=500", ndjson,
            {"Content-Type": "application/x-ndjson"},
        )
        assert status == 202, data
        map_id = json.loads(data)["id"]
        status, data = call("GET", f"/v1/maps/{map_id}/results")
        assert status == 200 and data.count(b"\n") == items, data[:200]
        map_rate = items / (time.perf_counter() - t)

        print("| workload | wasmpool serve |")
        print("|---|---|")
        print(f"| submit -> result round trip, tiny task, keep-alive (p50 / p99) | {p50:.2f} ms / {p99:.2f} ms |")
        print(f"| single-task submissions per second (202), one connection | {submits:,.0f}/s |")
        print(f"| map items per second through the NDJSON endpoints ({items} items, chunksize 500) | {map_rate:,.0f}/s |")
    finally:
        if server is not None:
            server.kill()
            server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
