//! Modules: compiled once into a content-addressed cache, validated before any task runs.

use std::time::Duration;

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

/// `component` with a custom section of `pad` bytes appended (still the same component).
fn padded(component: &[u8], pad: usize) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"padding";
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name);
    body.resize(body.len() + pad, 0);
    let mut out = component.to_vec();
    out.push(0);
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

#[test]
fn a_large_component_loaded_again_is_taken_by_its_stamp_until_its_file_changes() {
    testkit();
    let dir = TempDir::new("stamped");
    // Over the 1 MiB from which a component's digest is recorded.
    let bytes = padded(&std::fs::read(wasm_of("testkit")).unwrap(), 2 << 20);
    let file = dir.file("big.wasm", &bytes);
    let runtime = wasmpool::Runtime::builder()
        .cache_dir(dir.0.join("cache"))
        .build()
        .unwrap();
    let square = |m: &Module| {
        let p = wasmpool::Process::new(m, "square", &(9u64,)).unwrap();
        p.start().unwrap();
        p.join().unwrap();
        p.result::<u64>().unwrap()
    };
    let first = runtime.load(&file).unwrap();
    assert_eq!(square(&first), 81);
    let records = |sub: &str, suffix: &str| -> usize {
        std::fs::read_dir(dir.0.join("cache").join(sub))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(
        records("digests", ""),
        0,
        "a file just written is not recorded"
    );
    // Past the 2 s after which a file's times have settled.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let second = runtime.load(&file).unwrap();
    assert_eq!(records("digests", ""), 1, "its digest recorded");
    assert_eq!(
        records("artifacts", ".seen"),
        1,
        "its artifact's stamp recorded"
    );
    // Taken by its stamp: its bytes are read when asked for, and are the file's.
    let lazy = runtime.load(&file).unwrap();
    assert_eq!(lazy.artifact(), first.artifact());
    assert_eq!(second.artifact(), first.artifact());
    assert_eq!(square(&lazy), 81);
    assert_eq!(lazy.bytes().unwrap(), &bytes[..]);
    // Changed in place (same size, a byte of the padding): a module loaded before cannot
    // read it as its own any more, and a new load hashes it again.
    let unread = runtime.load(&file).unwrap();
    let mut changed = bytes.clone();
    let last = changed.len() - 1;
    changed[last] = 1;
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.seek(std::io::SeekFrom::Start(last as u64)).unwrap();
        f.write_all(&[1]).unwrap();
    }
    let err = unread.bytes().unwrap_err().to_string();
    assert!(err.contains("changed in place"), "{err}");
    assert_eq!(lazy.bytes().unwrap(), &bytes[..], "what was read stays");
    let again = runtime.load(&file).unwrap();
    assert_ne!(
        again.artifact(),
        first.artifact(),
        "other bytes, other artifact"
    );
    assert_eq!(again.bytes().unwrap(), &changed[..]);
    assert_eq!(square(&again), 81);
}

/// The `.cwasm` artifacts in a cache directory.
fn artifacts_in(cache: &std::path::Path) -> usize {
    std::fs::read_dir(cache.join("artifacts"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
                .count()
        })
        .unwrap_or(0)
}

/// A module loaded for a time limit compiles that code at load, and a timed process runs
/// it with no second compile; a plain pool of it then compiles the plain code, once.
#[test]
fn a_module_loaded_for_a_time_limit_is_compiled_once_for_it() {
    testkit();
    let dir = TempDir::new("compile-for");
    let cache = dir.0.join("cache");
    let runtime = wasmpool::Runtime::builder()
        .cache_dir(&cache)
        .build()
        .unwrap();
    let limits = wasmpool::Limits::default().timeout(Duration::from_secs(30));
    let options = wasmpool::BuildOptions::default().compile_for(&limits);
    let module = within(Duration::from_secs(300), move || {
        let module = runtime.load_with(wasm_of("testkit"), &options).unwrap();
        assert!(module.tasks().unwrap().iter().any(|t| t == "square"));
        let p = wasmpool::Process::new(&module, "square", &(9u64,))
            .unwrap()
            .with_limits(limits);
        p.start().unwrap();
        p.join().unwrap();
        assert_eq!(p.result::<u64>().unwrap(), 81);
        module
    });
    assert_eq!(artifacts_in(&cache), 1, "only the timed code was compiled");
    let plain = within(Duration::from_secs(300), move || {
        let pool = wasmpool::Pool::new(&module, 1).unwrap();
        pool.apply::<_, u64>("square", &(4u64,)).unwrap()
    });
    assert_eq!(plain, 16);
    assert_eq!(artifacts_in(&cache), 2, "the plain code, once asked for");
}

/// `wasmpool run --timeout` compiles a module once, for its time limit (before, the plain
/// code at load and the timed code at start: a first Python run compiled twice).
#[test]
fn a_timed_cli_run_compiles_its_module_once() {
    testkit();
    let dir = TempDir::new("cli-compile-for");
    let cache = dir.0.join("cache");
    let wasm = wasm_of("testkit");
    let out = within(Duration::from_secs(300), move || {
        cli()
            .env("WASMPOOL_CACHE_DIR", &cache)
            .args(["run", "--timeout", "30"])
            .arg(&wasm)
            .args(["square", "9"])
            .output()
            .unwrap()
    });
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "81");
    assert_eq!(artifacts_in(&dir.0.join("cache")), 1);
}
