//! How `#[task]` sends what a task returns: a `Result` under any name (an alias, `io::Result`)
//! fails the task with its `Err`, as a written-out `Result` does; `#[task(fallible)]` says so
//! outright and `#[task(infallible)]` sends the value whole. Each task's generated `call` is
//! run here, on the host, with an empty argument list.

#![allow(clippy::unwrap_used)]

use wasmpool_guest::__private::TaskError;
use wasmpool_guest::task;

/// A `Result` under another name: nothing in its spelling says `Result`.
type Checked = Result<u64, String>;

/// An alias whose name does end in `Result`.
type CheckResult = Result<u64, String>;

#[task]
fn written_out() -> Result<u64, String> {
    Err("refused".into())
}

#[task]
fn aliased() -> Checked {
    Err("refused".into())
}

#[task]
fn aliased_ok() -> Checked {
    Ok(7)
}

#[task]
fn named_result() -> CheckResult {
    Err("refused".into())
}

#[task]
fn io_result() -> std::io::Result<u64> {
    Err(std::io::Error::other("refused"))
}

#[task(fallible)]
fn forced() -> Checked {
    Err("refused".into())
}

#[task(infallible)]
fn whole() -> Checked {
    Err("refused".into())
}

#[task]
fn plain() -> u64 {
    7
}

#[task]
fn unit() {}

/// Calls a task with no arguments: what it encoded, or its error.
fn call(f: fn(&[u8], &mut Vec<u8>) -> Result<(), TaskError>) -> Result<Vec<u8>, TaskError> {
    let mut out = Vec::new();
    // An empty MessagePack array.
    f(&[0x90], &mut out).map(|()| out)
}

fn failed_with(r: Result<Vec<u8>, TaskError>, task: &str) -> String {
    match r {
        Err(TaskError::Failed(message)) => message,
        other => panic!("{task}: expected the task to fail, got {other:?}"),
    }
}

#[test]
fn an_alias_of_result_fails_the_task_with_its_err() {
    for (task, f) in [
        (
            "written_out",
            written_out::call as fn(&[u8], &mut Vec<u8>) -> _,
        ),
        ("aliased", aliased::call),
        ("named_result", named_result::call),
        ("io_result", io_result::call),
        ("forced", forced::call),
    ] {
        assert_eq!(failed_with(call(f), task), "refused", "{task}");
    }
    // Its `Ok` is the value alone, as for `plain`.
    assert_eq!(call(aliased_ok::call).unwrap(), call(plain::call).unwrap());
}

#[test]
fn infallible_sends_the_result_whole() {
    let bytes = call(whole::call).unwrap();
    let value: Result<u64, String> = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(value, Err("refused".to_string()));
}

#[test]
fn values_are_sent_as_before() {
    let seven: u64 = rmp_serde::from_slice(&call(plain::call).unwrap()).unwrap();
    assert_eq!(seven, 7);
    let unit: () = rmp_serde::from_slice(&call(unit::call).unwrap()).unwrap();
    assert_eq!(unit, ());
}
