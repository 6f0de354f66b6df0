//! A connection kept between calls: connected first when there is none, dropped after any
//! error (the next call connects again), and connected again for one more try when it went
//! stale (lost, timed out, closed by Redis's `timeout` while idle) or its node no longer
//! serves the layout's slot (`MOVED`, `ASK`: a Redis Cluster's failover or reshard;
//! [`connect`] goes to the node that serves it now).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::{ErrorKind, ServerErrorKind};

use super::{connect_or_lost, redis_error, unreachable};
use crate::error::{Error, Result};

/// Whether `e` says the connection's node no longer serves the slot of the keys (the
/// command did not run there).
pub(crate) fn moved(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::Ask)
    )
}

/// Whether a call that failed with `e` is tried once more, on a new connection: when the
/// node moved the slot away (a new connection goes to its new node), or when the
/// connection was lost and was not `fresh` (made for this call: then Redis is not reachable
/// now, and a second try would only wait as long again).
fn retried(e: &redis::RedisError, fresh: bool) -> bool {
    moved(e) || (!fresh && (e.is_io_error() || e.is_timeout() || e.is_connection_dropped()))
}

/// Runs `f` on `*con`, connecting to `url` first if there is none. After any error the
/// connection is dropped; after a stale connection's or a moved slot's (see the module's
/// text) `f` runs once more on a new one, kept if it works. `doing` says what for, in
/// the error. A call sent twice may have taken effect twice: callers' commands are
/// idempotent or fenced.
pub(crate) fn with_connection<T>(
    con: &mut Option<redis::Connection>,
    url: &str,
    doing: &str,
    f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
) -> Result<T> {
    attempt(con, url, doing, f).map_err(|(e, _)| e)
}

/// As [`with_connection`], and sets `down` when Redis could not be reached, clears it when
/// Redis answered (even with a refusal). An error says whether this call could not reach
/// Redis (`true`), which the shared `down`, written by other threads too, may no longer.
pub(crate) fn with_connection_noting<T>(
    con: &mut Option<redis::Connection>,
    url: &str,
    doing: &str,
    down: &AtomicBool,
    f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
) -> std::result::Result<T, (Error, bool)> {
    let tried = attempt(con, url, doing, f);
    down.store(matches!(tried, Err((_, true))), Ordering::Relaxed);
    tried
}

/// As [`with_connection`], and while Redis cannot be reached (down, restarting, a Redis
/// Cluster failing over: see [`unreachable`](super::unreachable)) it tries again every
/// [`PAUSE`], on a new connection, for up to `wait`, unless `stop` is set; the lock on
/// `con` is not held between tries. A refusal fails at once; after `wait`, the last error,
/// saying for how long Redis did not answer. `down` is set while a try finds Redis
/// unreachable, and cleared when one gets an answer.
pub(crate) fn with_connection_waiting<T>(
    con: &Mutex<Option<redis::Connection>>,
    url: &str,
    doing: &str,
    wait: Duration,
    (stop, down): (&AtomicBool, &AtomicBool),
    mut f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        let tried = {
            let mut con = con.lock().unwrap_or_else(|p| p.into_inner());
            attempt(&mut con, url, doing, &mut f)
        };
        down.store(matches!(tried, Err((_, true))), Ordering::Relaxed);
        match tried {
            Ok(v) => return Ok(v),
            Err((e, true)) if start.elapsed() < wait && !stop.load(Ordering::Relaxed) => {
                tracing::debug!("cluster: {e}; trying again");
                std::thread::sleep(PAUSE);
            }
            Err((Error::Cluster(m), true)) => {
                return Err(Error::Cluster(format!(
                    "{m} (tried again for {wait:?}: Redis did not come back)"
                )));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// How long [`with_connection_waiting`] pauses between tries.
const PAUSE: Duration = Duration::from_millis(200);

/// [`with_connection`]'s work; an error says whether Redis could not be reached (`true`).
fn attempt<T>(
    con: &mut Option<redis::Connection>,
    url: &str,
    doing: &str,
    mut f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
) -> std::result::Result<T, (Error, bool)> {
    let fresh = con.is_none();
    if fresh {
        *con = Some(connect_or_lost(url)?);
    }
    let Some(c) = con.as_mut() else {
        return Err((Error::Cluster("no connection to Redis".into()), false));
    };
    let failed = |e: redis::RedisError| {
        let lost = unreachable(&e);
        (redis_error(url, doing, e), lost)
    };
    match f(c) {
        Ok(v) => Ok(v),
        Err(e) => {
            *con = None;
            if !retried(&e, fresh) {
                return Err(failed(e));
            }
            let mut c = connect_or_lost(url)?;
            let v = f(&mut c).map_err(failed)?;
            *con = Some(c);
            Ok(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error a reply's bytes make, as a command's reply parses into it.
    fn error_of(reply: &[u8]) -> redis::RedisError {
        let value = redis::parse_redis_value(reply).expect("a reply");
        value.extract_error().expect_err("an error reply")
    }

    #[test]
    fn a_moved_slot_is_retried_on_a_new_connection_even_a_fresh_one_and_a_refusal_is_not() {
        let moved = error_of(b"-MOVED 6918 127.0.0.1:7002\r\n");
        let ask = error_of(b"-ASK 6918 127.0.0.1:7002\r\n");
        for e in [&moved, &ask] {
            assert!(retried(e, false), "{e:?}");
            assert!(retried(e, true), "{e:?}");
        }
        // A script's or a command's refusal: the same on any connection.
        for reply in [
            &b"-ERR unknown command 'NOPE'\r\n"[..],
            b"-NOGROUP No such key\r\n",
            b"-NOSCRIPT No matching script\r\n",
            b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
        ] {
            let e = error_of(reply);
            assert!(!retried(&e, false) && !retried(&e, true), "{e:?}");
        }
        // A lost connection: once more, unless it was made for this call.
        let lost =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(retried(&lost, false));
        assert!(!retried(&lost, true));
    }
}
