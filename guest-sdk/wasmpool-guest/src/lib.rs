//! Write [wasmpool](https://example.invalid/wasmpool) tasks in Rust.
//!
//! A task is a plain function whose arguments and return value are serde types. Mark it with
//! [`#[task]`](macro@task), list the module's tasks once with [`export_tasks!`], and build the
//! crate for `wasm32-wasip2`: the result is a WebAssembly component that the `wasmpool` host
//! runs in its sandboxed worker processes.
//!
//! ```no_run
//! use wasmpool_guest::task;
//!
//! /// `wasmpool run MODULE square 7` prints `49`.
//! #[task]
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! /// A task may fail: its `Err` reaches the caller as the task's error message.
//! #[task]
//! fn parse(text: String) -> Result<i64, std::num::ParseIntError> {
//!     text.trim().parse()
//! }
//!
//! wasmpool_guest::export_tasks!(square, parse);
//! # fn main() {}
//! ```
//!
//! A task is fallible when its return type *is* a `Result<T, E>` (with `E: Display`),
//! whatever it is called: `Result<T, E>`, `std::io::Result<T>` or an alias of the crate's
//! own (`type Res = Result<u64, String>`) all make `Err(e)` the task's error, since the
//! type, not its spelling, decides. `#[task(fallible)]` says so outright (a compile error if
//! the type is not a `Result`); `#[task(infallible)]` sends even a `Result` whole, as a
//! value the caller decodes (serde's `{"Ok": ..}` / `{"Err": ..}`).
//!
//! ```no_run
//! use wasmpool_guest::task;
//!
//! type Checked = Result<u64, String>;
//!
//! /// `Err` fails the task, as for a written-out `Result`.
//! #[task]
//! fn check(x: u64) -> Checked {
//!     if x == 0 { Err("zero".into()) } else { Ok(x) }
//! }
//!
//! /// The caller receives the `Result` itself.
//! #[task(infallible)]
//! fn check_whole(x: u64) -> Checked {
//!     check(x)
//! }
//!
//! wasmpool_guest::export_tasks!(check, check_whole);
//! # fn main() {}
//! ```
//!
//! Inside a task, `println!`/`eprintln!` reach the caller (tagged with the worker and task),
//! `std::thread::sleep`, `std::time` and randomness work as usual, and [`process`] tells the
//! task which OS process it runs in. Shared objects (queues, pipes, locks, semaphores,
//! events, barriers, conditions, dicts, lists) arrive as typed handles in a task's
//! arguments: see [`objects`]. A panic fails the task with the panic message; the
//! worker survives it and serves the next task.

#![deny(missing_docs)]

pub use wasmpool_guest_macros::task;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "task-module",
        pub_export_macro: true,
        default_bindings_module: "::wasmpool_guest::bindings",
        export_macro_name: "__export_world",
    });
}

pub mod objects;
pub mod process;
mod scalar;

/// The serde crate the task macros use; guests may use it too.
pub use serde;

#[doc(hidden)]
pub mod __private;

/// Exports the listed [`#[task]`](macro@task) functions as this component's tasks.
///
/// Call it once per guest crate, at the crate root, naming every task (a name may be
/// brought in with `use`). An optional `init = function` names a function run once in each
/// fresh worker instance before its first task; it returns `Result<(), E>` with `E: Display`.
///
/// ```no_run
/// # use wasmpool_guest::task;
/// # #[task] fn square(x: u64) -> u64 { x * x }
/// fn warm_up() -> Result<(), String> {
///     Ok(())
/// }
/// wasmpool_guest::export_tasks!(square; init = warm_up);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_tasks {
    ($($task:ident),* $(,)?) => {
        $crate::export_tasks!($($task),* ; init = $crate::__private::no_init);
    };
    ($($task:ident),* $(,)? ; init = $init:path) => {
        #[doc(hidden)]
        struct __WasmpoolTasks;

        impl __WasmpoolTasks {
            const TASKS: &'static [$crate::__private::TaskEntry] = &[
                $( ($task::NAME, $task::call) ),*
            ];
        }

        impl $crate::bindings::exports::wasmpool::task::tasks::Guest for __WasmpoolTasks {
            fn list_tasks() -> ::std::vec::Vec<::std::string::String> {
                $crate::__private::list_tasks(Self::TASKS)
            }
            fn init() -> ::std::result::Result<(), ::std::string::String> {
                $crate::__private::run_init($init)
            }
            fn call(
                task: ::std::string::String,
                args: ::std::vec::Vec<u8>,
            ) -> $crate::__private::Outcome {
                $crate::__private::call(Self::TASKS, &task, &args)
            }
            fn call_batch(
                task: ::std::string::String,
                items: $crate::__private::Packed,
            ) -> $crate::__private::BatchOutcome {
                $crate::__private::call_batch(Self::TASKS, &task, items)
            }
        }

        $crate::bindings::__export_world!(__WasmpoolTasks);
    };
}
