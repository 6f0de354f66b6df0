//! The batched scripts against a real `redis-server` of the test's own.
use super::*;
use std::collections::HashMap;

#[path = "../../../../tests/cluster/redis.rs"]
mod redis_server;

const GROUP: &str = "g";
const HOST: &str = "vm:1:h";

fn connect(server: &redis_server::RedisServer) -> redis::Connection {
    redis::Client::open(server.url())
        .and_then(|c| c.get_connection())
        .expect("connecting to the test's Redis")
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
    let server = redis_server::RedisServer::start();
    let mut con = connect(&server);
    let (tasks, redo) = ("t:tasks", "t:redo");
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", tasks, GROUP, "0", "MKSTREAM"])
        .query(&mut con)
        .unwrap();
    // Chunks of job a: 0 fresh; 1 redelivered since (attempt 1 current); 2 committed
    // already by this very attempt (a commit sent again); 3 cancelled. Job b: chunk 0
    // fresh (another results list).
    let ids: Vec<String> = [("a", 0), ("a", 1), ("a", 2), ("a", 3), ("b", 0)]
        .iter()
        .map(|(job, c)| claimed(&mut con, tasks, job, *c, 0, 3))
        .collect();
    let _: () = redis::cmd("HSET")
        .arg(&["job:a", "a:1", "1", "d:2", "0", "d:3", "x"])
        .query(&mut con)
        .unwrap();
    let chunks = [
        ("a", 0, "ra0"),
        ("a", 1, "ra1"),
        ("a", 2, "ra2"),
        ("a", 3, "ra3"),
        ("b", 0, "rb0"),
    ];
    let script = Script::new(COMMIT);
    let mut call = script.prepare_invoke();
    call.key("stats")
        .key("dead")
        .key("redoing")
        .arg(GROUP)
        .arg(HOST);
    for ((job, c, record), id) in chunks.iter().zip(&ids) {
        call.key(tasks)
            .key(format!("job:{job}"))
            .key(format!("results:{job}"))
            .key(redo)
            .arg(id)
            .arg(c)
            .arg("0")
            .arg(record)
            .arg(60_000)
            .arg(1)
            .arg(job);
    }
    let answers: Vec<i64> = call.invoke(&mut con).unwrap();
    assert_eq!(answers, [1, 0, 2, 3, 1]);
    let a: Vec<String> = redis::cmd("LRANGE")
        .arg(&["results:a", "0", "-1"])
        .query(&mut con)
        .unwrap();
    let b: Vec<String> = redis::cmd("LRANGE")
        .arg(&["results:b", "0", "-1"])
        .query(&mut con)
        .unwrap();
    assert_eq!((a, b), (vec!["ra0".to_string()], vec!["rb0".to_string()]));
    let stats: HashMap<String, i64> = redis::cmd("HGETALL").arg("stats").query(&mut con).unwrap();
    assert_eq!(
        stats,
        HashMap::from([("committed".into(), 2), ("dropped".into(), 1)])
    );
    // Every entry acknowledged and deleted, whatever its answer.
    let len: i64 = redis::cmd("XLEN").arg(tasks).query(&mut con).unwrap();
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(&[tasks, GROUP])
        .query(&mut con)
        .unwrap();
    assert_eq!(len, 0);
    assert!(
        matches!(&pending, redis::Value::Array(p) if p.first() == Some(&redis::Value::Int(0))),
        "{pending:?}"
    );
    for (key, ttl) in [
        ("job:a", "60000"),
        ("results:a", "60000"),
        ("results:b", "60000"),
    ] {
        let left: i64 = redis::cmd("PTTL").arg(key).query(&mut con).unwrap();
        assert!(left > 0 && left <= ttl.parse().unwrap(), "{key}: {left}");
    }
}

#[test]
fn a_commit_call_of_a_host_declared_dead_gives_its_chunks_back_each_as_alone() {
    let server = redis_server::RedisServer::start();
    let mut con = connect(&server);
    let (tasks, redo) = ("t:tasks", "t:redo");
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", tasks, GROUP, "0", "MKSTREAM"])
        .query(&mut con)
        .unwrap();
    // Declared dead at 100: chunk 0 (retries left) and chunk 1 (none) ran in a lane
    // admitted at 50, before it; chunk 2 in one admitted at 200, after it.
    let _: () = redis::cmd("ZADD")
        .arg(&["dead", "100", HOST])
        .query(&mut con)
        .unwrap();
    let ids = [
        claimed(&mut con, tasks, "a", 0, 0, 2),
        claimed(&mut con, tasks, "a", 1, 0, 0),
        claimed(&mut con, tasks, "a", 2, 0, 2),
    ];
    let script = Script::new(COMMIT);
    let mut call = script.prepare_invoke();
    call.key("stats")
        .key("dead")
        .key("redoing")
        .arg(GROUP)
        .arg(HOST);
    for (c, (id, since)) in ids.iter().zip([50, 50, 200]).enumerate() {
        call.key(tasks)
            .key("job:a")
            .key("results:a")
            .key(redo)
            .arg(id)
            .arg(c)
            .arg("0")
            .arg(format!("r{c}"))
            .arg(60_000)
            .arg(since)
            .arg("a");
    }
    let answers: Vec<i64> = call.invoke(&mut con).unwrap();
    assert_eq!(answers, [4, 5, 1]);
    let results: Vec<String> = redis::cmd("LRANGE")
        .arg(&["results:a", "0", "-1"])
        .query(&mut con)
        .unwrap();
    assert_eq!(results, [format!("L a 1 {HOST}"), "r2".to_string()]);
    let again: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(&[redo, "-", "+"])
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
    assert_eq!(redoing, [redo]);
    let stats: HashMap<String, i64> = redis::cmd("HGETALL").arg("stats").query(&mut con).unwrap();
    assert_eq!(
        stats,
        HashMap::from([
            ("committed".into(), 1),
            ("lost".into(), 1),
            ("redelivered".into(), 1)
        ])
    );
}

/// The commit of chunks of job `a` (chunk, entry id, record) from `tasks`, in one call.
fn commit(
    con: &mut redis::Connection,
    tasks: &str,
    chunks: &[(u32, &str, &str)],
) -> redis::RedisResult<Vec<i64>> {
    let script = Script::new(COMMIT);
    let mut call = script.prepare_invoke();
    call.key("stats")
        .key("dead")
        .key("redoing")
        .arg(GROUP)
        .arg(HOST);
    for (c, id, record) in chunks {
        call.key(tasks)
            .key(if *c == 9 { "job:broken" } else { "job:a" })
            .key("results:a")
            .key("t:redo")
            .arg(id)
            .arg(c)
            .arg("0")
            .arg(record)
            .arg(60_000)
            .arg(1)
            .arg("a");
    }
    call.invoke(con)
}

#[test]
fn a_commit_call_that_fails_on_its_way_leaves_no_chunk_done_without_its_record() {
    let server = redis_server::RedisServer::start();
    let mut con = connect(&server);
    let tasks = "t:tasks";
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", tasks, GROUP, "0", "MKSTREAM"])
        .query(&mut con)
        .unwrap();
    let first = claimed(&mut con, tasks, "a", 0, 0, 3);
    let second = claimed(&mut con, tasks, "a", 9, 0, 3);
    // The second chunk's job record is not a hash: the call fails at it, after the first
    // chunk was committed.
    let _: () = redis::cmd("SET")
        .arg(&["job:broken", "x"])
        .query(&mut con)
        .unwrap();
    let batch = [(0, first.as_str(), "r0"), (9, second.as_str(), "r9")];
    assert!(commit(&mut con, tasks, &batch).is_err());
    // Sent again, the first chunk answers "committed already"; its record is there, once.
    let _: () = redis::cmd("DEL").arg("job:broken").query(&mut con).unwrap();
    assert_eq!(commit(&mut con, tasks, &batch).unwrap(), [2, 1]);
    let results: Vec<String> = redis::cmd("LRANGE")
        .arg(&["results:a", "0", "-1"])
        .query(&mut con)
        .unwrap();
    assert_eq!(results, ["r0", "r9"]);
    let len: i64 = redis::cmd("XLEN").arg(tasks).query(&mut con).unwrap();
    assert_eq!(len, 0);
}

#[test]
fn one_submit_call_adds_each_chunk_once() {
    let server = redis_server::RedisServer::start();
    let mut con = connect(&server);
    let script = Script::new(SUBMIT);
    let submit = |con: &mut redis::Connection, chunks: &[u32]| -> Vec<String> {
        let mut call = script.prepare_invoke();
        call.key("t:tasks").arg(60_000).arg("client");
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
        .arg(&["t:tasks", "-", "+"])
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
