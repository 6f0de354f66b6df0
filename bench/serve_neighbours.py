#!/usr/bin/env python3
"""Benchmark of a quiet tenant's round trip beside a hostile one (stdlib only).

    python3 bench/serve_neighbours.py WASMPOOL_BINARY TESTKIT_WASM [N] [WORKERS]

Starts the real service on 127.0.0.1 port 0 in a temporary state directory with two
tenants: `quiet` and `hostile` (its `running` quota is half the workers). In one sitting it
measures the quiet tenant's submit -> result round trip of a tiny task
(`POST /v1/tasks?wait=10`, task `add`, one keep-alive connection), p50/p99:
- alone;
- while the hostile tenant keeps its share of the workers busy with tasks that loop past
  their time limit (1 s), bomb memory past their memory limit, flood their output past its
  limit and kill their worker (each answered with its own error, checked).
"""

import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

MISDEEDS = [
    {"task": "spin", "args": [], "limits": {"timeout_s": 1.0}},
    {"task": "alloc_mib", "args": [400], "limits": {"memory_mib": 64}},
    {"task": "print_mib", "args": [64], "limits": {"output_mib": 1}},
    {"task": "exit_with", "args": [3]},
]


def add_tenant(binary, tenants, name, replace):
    token = subprocess.check_output(
        [binary, "tenant", "add", name, "--tenants", tenants], text=True
    ).strip()
    text = open(tenants).read()
    # The last tenant added is the file's last table: its quotas are the last ones.
    head, sep, tail = text.rpartition(f'name = "{name}"')
    for old, new in replace:
        tail = tail.replace(old, new)
    open(tenants, "w").write(head + sep + tail)
    return token


class Client:
    def __init__(self, host, port, token):
        self.conn = http.client.HTTPConnection(host, port, timeout=120)
        self.auth = {"Authorization": f"Bearer {token}"}

    def call(self, method, path, body=None, headers=None):
        self.conn.request(method, path, body=body, headers={**self.auth, **(headers or {})})
        r = self.conn.getresponse()
        return r.status, r.read()


def percentiles(times):
    times = sorted(times)
    return statistics.median(times) * 1e3, times[int(len(times) * 0.99) - 1] * 1e3


def main():
    binary, wasm = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    workers = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    tmp = tempfile.mkdtemp(prefix="wasmpool-serve-neighbours-")
    server = None
    stop = threading.Event()
    try:
        tenants = os.path.join(tmp, "tenants.toml")
        quiet_token = add_tenant(binary, tenants, "quiet", [("rate = 100.0", "rate = 1000000.0")])
        hostile_token = add_tenant(
            binary, tenants, "hostile",
            [("running = 4", f"running = {max(1, workers // 2)}"), ("rate = 100.0", "rate = 1000000.0")],
        )
        server = subprocess.Popen(
            [binary, "serve", "--listen", "127.0.0.1:0", "--tenants", tenants,
             "--state", os.path.join(tmp, "state"), "--workers", str(workers)],
            stdout=subprocess.PIPE, text=True,
        )
        line = server.stdout.readline().strip()
        host, port = line.removeprefix("listening on http://").rsplit(":", 1)
        port = int(port)
        quiet = Client(host, port, quiet_token)
        module_bytes = open(wasm, "rb").read()
        status, data = quiet.call("POST", "/v1/modules", module_bytes)
        assert status == 201, data
        module = json.loads(data)["sha256"]
        hostile = Client(host, port, hostile_token)
        status, data = hostile.call("POST", "/v1/modules", module_bytes)
        assert status == 201, data

        body = json.dumps({"module": module, "task": "add", "args": [2, 3]})

        def round_trips():
            times = []
            for _ in range(n):
                t = time.perf_counter()
                status, data = quiet.call("POST", "/v1/tasks?wait=10", body)
                times.append(time.perf_counter() - t)
                assert status == 200 and b'"result":5' in data, data
            return times

        for _ in range(200):  # warm: the pool starts, caches fill
            status, data = quiet.call("POST", "/v1/tasks?wait=10", body)
            assert status == 200, data
        alone = percentiles(round_trips())

        errors = {}
        done = [0]

        def attack(k):
            # Each attacker keeps one misdeed in flight, waiting for its error.
            c = Client(host, port, hostile_token)
            i = k
            while not stop.is_set():
                m = MISDEEDS[i % len(MISDEEDS)]
                i += 1
                status, data = c.call("POST", "/v1/tasks?wait=30", json.dumps({"module": module, **m}))
                if status != 200:
                    continue
                v = json.loads(data)
                assert "error" in v, v
                errors.setdefault(m["task"], set()).add(v["error"]["code"])
                done[0] += 1

        attackers = [threading.Thread(target=attack, args=(k,), daemon=True) for k in range(2 * workers)]
        for a in attackers:
            a.start()
        time.sleep(2.0)  # the hostile tenant's work is under way
        beside = percentiles(round_trips())
        stop.set()
        for a in attackers:
            a.join(timeout=60)

        print(f"| quiet tenant's round trip, tiny task, keep-alive (p50 / p99), alone | {alone[0]:.2f} ms / {alone[1]:.2f} ms |")
        print(f"| the same, beside a hostile tenant (running = {max(1, workers // 2)} of {workers} workers) | {beside[0]:.2f} ms / {beside[1]:.2f} ms |")
        print(f"hostile tasks finished meanwhile: {done[0]}; their error codes: "
              + ", ".join(f"{t}: {sorted(c)}" for t, c in sorted(errors.items())))
    finally:
        stop.set()
        if server is not None:
            server.kill()
            server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
