#!/usr/bin/env python3
"""The task queues people run on Redis, on the same tiny task, as the peers of wasmpool's
service and cluster rows.

    python3 bench/redis_peers.py [N] [--redis-port PORT]

Starts its own `redis-server` on a free loopback port (persistence off), or uses the one on
127.0.0.1:PORT (database 1 for the Python peers; the caller's server, left running: the
cluster benchmark passes its own, so the peers run on the same Redis as wasmpool), and, for
each of
Celery (prefork pool, 2 processes), RQ (2 `rq worker` processes, RQ's default forking
worker), Dramatiq (2 processes, 1 thread each) and BullMQ (bench/bullmq_peer.mjs: 2 worker
processes of concurrency 1, when `node` and `npm` are there), starts the peer's own workers,
then measures on the task `add(2, 3)`:
- `tasks_per_s`: N submissions at once, then every result collected;
- `roundtrip_p50_ms` / `roundtrip_p99_ms`: one submission at a time, waiting for its result
  (the peer's blocking result wait), 200 times after a warm-up.
Prints one JSON line per peer and measure, like bench/python_multiprocessing.py:
`{"peer": "celery", "name": "tasks_per_s", "value": 1234.5}`.

The peers are installed on first use into a virtualenv under ~/.cache/wasmpool/bench-venv
(pip, from PyPI; the script re-runs itself there) and BullMQ into
~/.cache/wasmpool/bench-node (npm). Needs `redis-server` (Debian's package).
"""

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

VENV = os.path.expanduser("~/.cache/wasmpool/bench-venv")
NODE_DIR = os.path.expanduser("~/.cache/wasmpool/bench-node")
REQUIREMENTS = ["celery[redis]>=5.4,<6", "rq>=1.16,<3", "dramatiq[redis]>=1.17,<3"]

TASKS = '''
import os
URL = os.environ["PEER_REDIS"]

def add(a, b):
    return a + b
'''

CELERY_APP = TASKS + '''
from celery import Celery
app = Celery("peers_celery", broker=URL, backend=URL)
app.conf.update(worker_prefetch_multiplier=4, task_acks_late=False, result_expires=600,
                broker_connection_retry_on_startup=True)
add = app.task(name="add")(add)
'''

DRAMATIQ_APP = TASKS + '''
import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend
broker = RedisBroker(url=URL)
broker.add_middleware(Results(backend=RedisBackend(url=URL)))
dramatiq.set_broker(broker)
add = dramatiq.actor(store_results=True, actor_name="add")(add)
'''


def in_venv():
    python = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    if not os.path.exists(python):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
    check = subprocess.run(
        [python, "-c", "import celery, rq, dramatiq, redis"], capture_output=True
    )
    if check.returncode != 0:
        subprocess.check_call(
            [python, "-m", "pip", "install", "-q", *REQUIREMENTS], stdout=sys.stderr
        )
    os.execv(python, [python, *sys.argv])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(tmp):
    server = shutil.which("redis-server")
    if server is None:
        sys.exit("redis-server is missing: apt-get install -y redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", tmp],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    import redis

    r = redis.Redis(port=port)
    for _ in range(200):
        try:
            r.ping()
            return proc, port
        except redis.ConnectionError:
            time.sleep(0.02)
    proc.kill()
    sys.exit("redis-server did not start")


def measure(submit, wait, n):
    """(tasks/s for n at once, p50 ms, p99 ms of one at a time)."""
    for _ in range(50):  # warm-up: workers started, connections made
        wait(submit())
    t = time.perf_counter()
    handles = [submit() for _ in range(n)]
    for h in handles:
        assert wait(h) == 5
    rate = n / (time.perf_counter() - t)
    trips = []
    for _ in range(200):
        t = time.perf_counter()
        assert wait(submit()) == 5
        trips.append((time.perf_counter() - t) * 1e3)
    trips.sort()
    return rate, statistics.median(trips), trips[int(len(trips) * 0.99) - 1]


def emit(peer, rate, p50, p99):
    for name, value in [("tasks_per_s", rate), ("roundtrip_p50_ms", p50),
                        ("roundtrip_p99_ms", p99)]:
        print(json.dumps({"peer": peer, "name": name, "value": round(value, 3)}), flush=True)


def stop(procs):
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def bullmq(port, n):
    """BullMQ through bench/bullmq_peer.mjs, installed with npm on first use."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        print("bullmq: no node/npm here, skipped", file=sys.stderr)
        return
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "bullmq")):
        os.makedirs(NODE_DIR, exist_ok=True)
        subprocess.check_call([npm, "install", "--silent", "--prefix", NODE_DIR, "bullmq@5"],
                              stdout=sys.stderr)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bullmq_peer.mjs")
    # The script is run from a copy beside node_modules, so its import finds bullmq.
    copy = os.path.join(NODE_DIR, "bullmq_peer.mjs")
    shutil.copyfile(script, copy)
    subprocess.run([node, copy, str(port), str(n)], check=True, timeout=600)


def args():
    """(N, the port of a Redis to use or None)."""
    rest = sys.argv[1:]
    port = None
    if "--redis-port" in rest:
        i = rest.index("--redis-port")
        if i + 1 >= len(rest):
            sys.exit("--redis-port needs a port")
        port = int(rest[i + 1])
        del rest[i : i + 2]
    return (int(rest[0]) if rest else 2000), port


def main():
    in_venv()
    n, given_port = args()
    tmp = tempfile.mkdtemp(prefix="wasmpool-peers-")
    if given_port is None:
        redis_proc, port = start_redis(tmp)
        url = f"redis://127.0.0.1:{port}/0"
    else:
        redis_proc, port = None, given_port
        url = f"redis://127.0.0.1:{port}/1"
    env = {**os.environ, "PEER_REDIS": url, "PYTHONPATH": tmp}
    os.environ.update(env)
    sys.path.insert(0, tmp)
    bindir = os.path.join(VENV, "bin")
    try:
        # Celery, prefork pool of 2.
        open(os.path.join(tmp, "peers_celery.py"), "w").write(CELERY_APP)
        workers = [subprocess.Popen(
            [os.path.join(bindir, "celery"), "-A", "peers_celery", "worker", "--pool=prefork",
             "--concurrency=2", "--loglevel=ERROR", "--without-gossip", "--without-mingle",
             "--without-heartbeat"],
            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        try:
            import peers_celery

            emit("celery", *measure(lambda: peers_celery.add.delay(2, 3),
                                    lambda r: r.get(timeout=30), n))
        finally:
            stop(workers)

        # RQ: two workers (each forks a work horse per job, RQ's default).
        import redis
        from rq import Queue

        open(os.path.join(tmp, "peers_rq.py"), "w").write(TASKS)
        conn = redis.Redis.from_url(url)
        workers = [subprocess.Popen(
            [os.path.join(bindir, "rq"), "worker", "--url", url, "--quiet", "peers"],
            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(2)]
        try:
            q = Queue("peers", connection=conn)

            def rq_wait(job):
                result = job.latest_result(timeout=30)
                return result.return_value

            emit("rq", *measure(lambda: q.enqueue("peers_rq.add", 2, 3), rq_wait, n))
        finally:
            stop(workers)

        # Dramatiq: two processes of one thread.
        open(os.path.join(tmp, "peers_dramatiq.py"), "w").write(DRAMATIQ_APP)
        workers = [subprocess.Popen(
            [os.path.join(bindir, "dramatiq"), "peers_dramatiq", "--processes", "2",
             "--threads", "1"],
            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        try:
            import peers_dramatiq

            emit("dramatiq", *measure(
                lambda: peers_dramatiq.add.send(2, 3),
                lambda m: m.get_result(block=True, timeout=30_000), n))
        finally:
            stop(workers)

        bullmq(port, n)
    finally:
        if redis_proc is not None:
            redis_proc.kill()
            redis_proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
