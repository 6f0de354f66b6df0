//! `#[task]` on input it cannot turn into a task is a compile error at the offending tokens.
//! The expected compiler output is in `tests/ui/*.stderr` (`TRYBUILD=overwrite` regenerates it).

#[test]
fn bad_task_definitions_are_spanned_compile_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
