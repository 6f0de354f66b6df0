// BullMQ, the peer of bench/redis_peers.py on the same tiny task: `add(2, 3)` through a
// Redis it is given, two worker processes of concurrency 1, results awaited with
// QueueEvents. Prints JSON lines as redis_peers.py does.
//
//     node bench/bullmq_peer.mjs PORT N       (run by redis_peers.py, which installs bullmq)
import { fork } from "node:child_process";
import { Queue, QueueEvents, Worker } from "bullmq";

const connection = { host: "127.0.0.1", port: Number(process.argv[2]) };

if (process.argv[3] === "worker") {
  const worker = new Worker("peers", async (job) => job.data.a + job.data.b, {
    connection,
    concurrency: 1,
  });
  process.on("SIGTERM", async () => {
    await worker.close();
    process.exit(0);
  });
} else {
  const n = Number(process.argv[3] || 2000);
  const workers = [0, 1].map(() =>
    fork(new URL(import.meta.url).pathname, [process.argv[2], "worker"]),
  );
  const queue = new Queue("peers", { connection });
  queue.setMaxListeners(0); // n adds in flight at once each add a listener
  const events = new QueueEvents("peers", { connection });
  await events.waitUntilReady();
  const opts = { removeOnComplete: 1000, removeOnFail: 1000 };
  const one = async () => {
    const job = await queue.add("add", { a: 2, b: 3 }, opts);
    return job.waitUntilFinished(events, 30_000);
  };
  for (let i = 0; i < 50; i++) await one();
  let t = performance.now();
  const jobs = await Promise.all(
    Array.from({ length: n }, () => queue.add("add", { a: 2, b: 3 }, opts)),
  );
  const results = await Promise.all(jobs.map((j) => j.waitUntilFinished(events, 60_000)));
  if (!results.every((r) => r === 5)) throw new Error("a wrong result");
  const rate = n / ((performance.now() - t) / 1000);
  const trips = [];
  for (let i = 0; i < 200; i++) {
    t = performance.now();
    if ((await one()) !== 5) throw new Error("a wrong result");
    trips.push(performance.now() - t);
  }
  trips.sort((a, b) => a - b);
  const emit = (name, value) =>
    console.log(JSON.stringify({ peer: "bullmq", name, value: Math.round(value * 1000) / 1000 }));
  emit("tasks_per_s", rate);
  emit("roundtrip_p50_ms", (trips[99] + trips[100]) / 2);
  emit("roundtrip_p99_ms", trips[197]);
  for (const w of workers) w.kill("SIGTERM");
  await queue.close();
  await events.close();
  process.exit(0);
}
