//! Modules: compiled once into a content-addressed cache, validated before any task runs.

use wasmpool::{Error, Module};

use crate::util::*;

#[test]
fn a_module_is_compiled_once_into_a_content_addressed_cache() {
    let a = testkit();
    let bytes = std::fs::read(wasm_of("testkit")).unwrap();
    let b = Module::from_bytes(&bytes, "again").unwrap();
    assert_eq!(a.artifact(), b.artifact(), "same bytes, same artifact");
    assert!(a.artifact().starts_with(wasmpool::cache_dir()));
    let c = Module::from_bytes(
        &std::fs::read(wasm_of("seeds")).unwrap_or_else(|_| {
            seeds();
            std::fs::read(wasm_of("seeds")).unwrap()
        }),
        "seeds",
    )
    .unwrap();
    assert_ne!(
        a.artifact(),
        c.artifact(),
        "different bytes, different artifact"
    );
}

#[test]
fn bad_modules_are_refused_before_any_task_runs() {
    setup();
    let cases: [(&[u8], &str); 4] = [
        (b"", "is empty"),
        (b"GIF89a......", "is not WebAssembly"),
        (b"\0asm\x01\0\0\0", "core WebAssembly module"),
        (
            b"\0asm\x0d\0\x01\0",
            "does not implement the wasmpool:task world",
        ),
    ];
    for (bytes, needle) in cases {
        match Module::from_bytes(bytes, "case") {
            Err(e @ Error::BadModule { .. }) => assert!(e.to_string().contains(needle), "{e}"),
            other => panic!("{needle}: expected BadModule, got {other:?}"),
        }
    }
}

#[test]
fn module_tasks_lists_exports_in_declaration_order() {
    let tasks = within(std::time::Duration::from_secs(60), || {
        testkit().tasks().unwrap()
    });
    assert_eq!(&tasks[..3], ["noop", "square", "add"]);
}
