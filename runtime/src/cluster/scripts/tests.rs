//! The batched scripts against a real `redis-server` of the test's own.
use super::*;
use std::collections::HashMap;

#[path = "../../../../tests/cluster/redis.rs"]
mod redis_server;

const GROUP: &str = "g";
const HOST: &str = "vm:1:h";

const TASKS: &str = "t:tasks";
const REDO: &str = "t:redo";

/// A Redis of the test's own, connected, with the task stream's group made.
fn started() -> (redis_server::RedisServer, redis::Connection) {
    let server = redis_server::RedisServer::start();
    let mut con = redis::Client::open(server.url())
        .and_then(|c| c.get_connection())
        .expect("connecting to the test's Redis");
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", TASKS, GROUP, "0", "MKSTREAM"])
        .query(&mut con)
        .unwrap();
    (server, con)
}

/// A chunk of a commit call: its job, chunk, entry id, record, and when its lane was
/// admitted.
struct Done<'a>(&'a str, u32, &'a str, &'a str, u64);

/// Commits `chunks` (attempt 0, claimed from `TASKS`, results kept a minute) in one call.
fn commit(con: &mut redis::Connection, chunks: &[Done]) -> redis::RedisResult<Vec<i64>> {
    let script = Script::new(COMMIT);
    let mut call = script.prepare_invoke();
    call.key("stats")
        .key("dead")
        .key("redoing")
        .arg(GROUP)
        .arg(HOST);
    for Done(job, c, id, record, since) in chunks {
        call.key(TASKS)
            .key(format!("job:{job}"))
            .key(format!("results:{job}"))
            .key(REDO)
            .arg(id)
            .arg(c)
            .arg("0")
            .arg(record)
            .arg(60_000)
            .arg(since)
            .arg(job);
    }
    call.invoke(con)
}

/// The items of list `key`.
fn list(con: &mut redis::Connection, key: &str) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg(&[key, "0", "-1"])
        .query(con)
        .unwrap()
}

/// The counts in `stats`.
fn stats(con: &mut redis::Connection) -> HashMap<String, i64> {
    redis::cmd("HGETALL").arg("stats").query(con).unwrap()
}

/// Adds an entry of chunk `c` of `job` (attempt `a`, retries `n`) to `stream` and claims
/// it as the host; its id.
fn claimed(con: &mut redis::Connection, stream: &str, job: &str, c: u32, a: u32, n: u32) -> String {
    let id: String = redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg(&["j", job, "c", &c.to_string(), "a", &a.to_string()])
        .arg(&[
            "r",
            "client",
            "n",
            &n.to_string(),
            "t",
            "60000",
            "p",
            "payload",
        ])
        .query(con)
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", GROUP, HOST, "COUNT", "1", "STREAMS", stream, ">"])
        .query(con)
        .unwrap();
    id
}

#[test]
fn one_commit_call_answers_each_chunk_as_if_alone_and_shares_the_rest() {
    let (_server, mut con) = started();
    // Chunks of job a: 0 fresh; 1 redelivered since (attempt 1 current); 2 committed
    // already by this very attempt (a commit sent again); 3 cancelled. Job b: chunk 0
    // fresh (another results list).
    let chunks = [("a", 0), ("a", 1), ("a", 2), ("a", 3), ("b", 0)];
    let ids: Vec<String> = chunks
        .iter()
        .map(|(job, c)| claimed(&mut con, TASKS, job, *c, 0, 3))
        .collect();
    let _: () = redis::cmd("HSET")
        .arg(&["job:a", "a:1", "1", "d:2", "0", "d:3", "x"])
        .query(&mut con)
        .unwrap();
    let records = ["ra0", "ra1", "ra2", "ra3", "rb0"];
    let done: Vec<Done> = chunks
        .iter()
        .zip(&ids)
        .zip(records)
        .map(|(((job, c), id), record)| Done(job, *c, id, record, 1))
        .collect();
    assert_eq!(commit(&mut con, &done).unwrap(), [1, 0, 2, 3, 1]);
    assert_eq!(
        (list(&mut con, "results:a"), list(&mut con, "results:b")),
        (vec!["ra0".to_string()], vec!["rb0".to_string()])
    );
    assert_eq!(
        stats(&mut con),
        HashMap::from([("committed".into(), 2), ("dropped".into(), 1)])
    );
    // Every entry acknowledged and deleted, whatever its answer.
    let len: i64 = redis::cmd("XLEN").arg(TASKS).query(&mut con).unwrap();
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(&[TASKS, GROUP])
        .query(&mut con)
        .unwrap();
    assert_eq!(len, 0);
    assert!(
        matches!(&pending, redis::Value::Array(p) if p.first() == Some(&redis::Value::Int(0))),
        "{pending:?}"
    );
    for key in ["job:a", "results:a", "results:b"] {
        let left: i64 = redis::cmd("PTTL").arg(key).query(&mut con).unwrap();
        assert!(left > 0 && left <= 60_000, "{key}: {left}");
    }
}

#[test]
fn a_commit_call_of_a_host_declared_dead_gives_its_chunks_back_each_as_alone() {
    let (_server, mut con) = started();
    // Declared dead at 100: chunk 0 (retries left) and chunk 1 (none) ran in a lane
    // admitted at 50, before it; chunk 2 in one admitted at 200, after it.
    let _: () = redis::cmd("ZADD")
        .arg(&["dead", "100", HOST])
        .query(&mut con)
        .unwrap();
    let ids = [
        claimed(&mut con, TASKS, "a", 0, 0, 2),
        claimed(&mut con, TASKS, "a", 1, 0, 0),
        claimed(&mut con, TASKS, "a", 2, 0, 2),
    ];
    let done = [
        Done("a", 0, &ids[0], "r0", 50),
        Done("a", 1, &ids[1], "r1", 50),
        Done("a", 2, &ids[2], "r2", 200),
    ];
    assert_eq!(commit(&mut con, &done).unwrap(), [4, 5, 1]);
    assert_eq!(
        list(&mut con, "results:a"),
        [format!("L a 1 {HOST}"), "r2".to_string()]
    );
    let again: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(&[REDO, "-", "+"])
        .query(&mut con)
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].1["c"].as_str(), again[0].1["a"].as_str()),
        ("0", "1")
    );
    let redoing: Vec<String> = redis::cmd("SMEMBERS")
        .arg("redoing")
        .query(&mut con)
        .unwrap();
    assert_eq!(redoing, [REDO]);
    assert_eq!(
        stats(&mut con),
        HashMap::from([
            ("committed".into(), 1),
            ("lost".into(), 1),
            ("redelivered".into(), 1)
        ])
    );
}

#[test]
fn a_commit_call_that_fails_on_its_way_leaves_no_chunk_done_without_its_record() {
    let (_server, mut con) = started();
    let first = claimed(&mut con, TASKS, "a", 0, 0, 3);
    let second = claimed(&mut con, TASKS, "broken", 0, 0, 3);
    // The second chunk's job record is not a hash: the call fails at it, after the first
    // chunk was committed.
    let _: () = redis::cmd("SET")
        .arg(&["job:broken", "x"])
        .query(&mut con)
        .unwrap();
    let batch = [
        Done("a", 0, &first, "r0", 1),
        Done("broken", 0, &second, "r1", 1),
    ];
    assert!(commit(&mut con, &batch).is_err());
    // Sent again, the first chunk answers "committed already"; its record is there, once.
    let _: () = redis::cmd("DEL").arg("job:broken").query(&mut con).unwrap();
    assert_eq!(commit(&mut con, &batch).unwrap(), [2, 1]);
    assert_eq!(list(&mut con, "results:a"), ["r0"]);
    assert_eq!(list(&mut con, "results:broken"), ["r1"]);
    let len: i64 = redis::cmd("XLEN").arg(TASKS).query(&mut con).unwrap();
    assert_eq!(len, 0);
}

#[test]
fn one_submit_call_adds_each_chunk_once() {
    let (_server, mut con) = started();
    let script = Script::new(SUBMIT);
    let submit = |con: &mut redis::Connection, chunks: &[u32]| -> Vec<String> {
        let mut call = script.prepare_invoke();
        call.key(TASKS).arg(60_000).arg("client");
        for c in chunks {
            call.key("job:a")
                .arg("a")
                .arg(c)
                .arg(5)
                .arg(format!("p{c}"));
        }
        call.invoke(con).unwrap()
    };
    let first = submit(&mut con, &[0, 1]);
    // Sent again (a broken connection) with one more: only the new one is added.
    let second = submit(&mut con, &[0, 1, 2]);
    assert_eq!(&second[..2], &first[..]);
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(&[TASKS, "-", "+"])
        .query(&mut con)
        .unwrap();
    let ids: Vec<&String> = entries.iter().map(|(id, _)| id).collect();
    assert_eq!(ids, second.iter().collect::<Vec<_>>());
    let f = &entries[2].1;
    let want = [
        ("j", "a"),
        ("c", "2"),
        ("a", "0"),
        ("r", "client"),
        ("n", "5"),
        ("t", "60000"),
        ("p", "p2"),
    ];
    assert_eq!(f.len(), want.len());
    for (k, v) in want {
        assert_eq!(f[k], v, "{k}");
    }
    let left: i64 = redis::cmd("PTTL").arg("job:a").query(&mut con).unwrap();
    assert!(left > 0 && left <= 60_000, "{left}");
}

#[test]
fn a_batch_goes_in_calls_of_at_most_64_chunks_and_4_mib_a_big_chunk_alone() {
    assert_eq!(calls([10; 130]), [0..64, 64..128, 128..130]);
    const MIB: usize = 1 << 20;
    assert_eq!(calls([MIB, MIB, MIB, MIB, 1]), [0..4, 4..5]);
    assert_eq!(
        calls([3 * MIB, 2 * MIB, 5 * MIB, 1, 1]),
        [0..1, 1..2, 2..3, 3..5]
    );
    assert!(calls([0usize; 0]).is_empty());
}
