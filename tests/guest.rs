//! The guest SDK's behaviour as the host sees it (the macro's compile errors are tested in
//! `guest-sdk/wasmpool-guest-macros/tests`).

use std::time::Duration;

use wasmpool::Process;

use crate::util::*;

#[test]
fn unit_results_are_nil_and_fallible_tasks_return_their_ok_value() {
    within(Duration::from_secs(60), || {
        let p = Process::new(&testkit(), "noop", &()).unwrap();
        p.start().unwrap();
        p.join().unwrap();
        assert_eq!(p.result_bytes().unwrap(), vec![0xc0]);
        p.result::<()>().unwrap();
    });
}
