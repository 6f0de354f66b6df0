//! Building a guest Cargo project into a component, for `MODULE` arguments that are
//! directories.
//!
//! Building a project runs code natively, outside any sandbox: its build scripts and proc
//! macros, and those of every dependency, run as the user with the user's files. A project
//! directory is therefore trusted input, like any source you build; only built `.wasm`
//! files are untrusted. As a guard against the obvious case, a project whose own packages
//! (the one in the directory and any local path dependency) have a build script is refused
//! unless build scripts are allowed ([`BuildOptions::allow_build_scripts`], or
//! `WASMPOOL_ALLOW_BUILD_SCRIPTS=1`). Proc macros are not refused: every guest uses the
//! SDK's own (`#[wasmpool_guest::task]`).
//!
//! The nested cargo gets its own target dir (the guest workspace's default one): sharing the
//! outer build's target dir would deadlock on its lock. The `wasm32-wasip2` target is
//! installed with rustup if it is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::engine::EngineKind;
use crate::error::{Error, Result};
use crate::protocol::Limits;

const TARGET: &str = "wasm32-wasip2";

/// Environment variables of an outer cargo run that must not leak into the guest build.
const OUTER_CARGO_ENV: &[&str] = &[
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_MAKEFLAGS",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
];

fn fail(dir: &Path, message: impl Into<String>) -> Error {
    Error::GuestBuild {
        path: dir.to_path_buf(),
        message: message.into(),
    }
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

fn ensure_target(dir: &Path) -> Result<()> {
    static CHECKED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let listed = Command::new("rustup")
                .args(["target", "list", "--installed"])
                .current_dir(dir)
                .output();
            match listed {
                Ok(out)
                    if String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .any(|l| l.trim() == TARGET) =>
                {
                    Ok(())
                }
                Ok(_) => {
                    let status = Command::new("rustup")
                        .args(["target", "add", TARGET])
                        .current_dir(dir)
                        .stdout(Stdio::null())
                        .status()
                        .map_err(|e| format!("cannot run rustup: {e}"))?;
                    if status.success() {
                        Ok(())
                    } else {
                        Err(format!("`rustup target add {TARGET}` failed ({status})"))
                    }
                }
                // No rustup: let cargo say whether the target is there.
                Err(_) => Ok(()),
            }
        })
        .clone()
        .map_err(|m| fail(dir, m))
}

/// How a guest project directory is built, and which code a module is compiled to when it
/// loads (see [`Module::load_with`](crate::Module::load_with)).
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Run the build scripts (`build.rs`) of the project's own packages. Off by default: a
    /// project with one is refused, since its build script would run natively, with the
    /// user's rights. `WASMPOOL_ALLOW_BUILD_SCRIPTS=1` turns it on as well.
    pub allow_build_scripts: bool,
    /// The engine kind whose artifact is compiled at load (see [`BuildOptions::compile_for`]).
    pub(crate) engine: EngineKind,
}

impl BuildOptions {
    /// Allows (or not) the build scripts of the project's own packages.
    pub fn allow_build_scripts(mut self, allow: bool) -> Self {
        self.allow_build_scripts = allow;
        self
    }

    /// Compiles at load the code that pools and processes with these `limits` run: with a
    /// time limit, code that checks the clock (so wasm stops at its deadline); with a fuel
    /// limit, code that counts fuel; otherwise (the default) the fastest code, without
    /// either. A module compiles the code of another kind too, the first time a pool or
    /// process of that kind asks for it; this only saves that second compile (~10
    /// CPU-seconds here for a Python component's first) for a module that is only ever run
    /// with such limits, as `wasmpool run --timeout` runs one.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use wasmpool::{BuildOptions, Limits, Module, Process};
    /// let limits = Limits::default().timeout(Duration::from_secs(5));
    /// let module = Module::load_with("tasks.py", &BuildOptions::default().compile_for(&limits))?;
    /// let p = Process::new(&module, "job", &(7u64,))?.with_limits(limits); // no compile here
    /// p.start()?;
    /// p.join()?;
    /// # Ok::<(), wasmpool::Error>(())
    /// ```
    pub fn compile_for(mut self, limits: &Limits) -> Self {
        self.engine = EngineKind::for_limits(limits);
        self
    }
}

/// The environment variable that allows build scripts for every project loaded.
const ALLOW_ENV: &str = "WASMPOOL_ALLOW_BUILD_SCRIPTS";

fn build_scripts_allowed(options: &BuildOptions) -> bool {
    options.allow_build_scripts || std::env::var(ALLOW_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A nested cargo for the project at `dir`, without the outer build's environment.
fn nested_cargo(dir: &Path) -> Command {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(dir).stdin(Stdio::null());
    for var in OUTER_CARGO_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// Refuses the project if one of its own packages (source-less in cargo's metadata: the
/// project itself, its workspace, its path dependencies) has a build script.
fn refuse_build_scripts(dir: &Path, manifest: &Path) -> Result<()> {
    let out = nested_cargo(dir)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(manifest)
        .output()
        .map_err(|e| fail(dir, format!("cannot run cargo: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(fail(
            dir,
            format!("cannot read the project's packages (cargo metadata failed: {last})"),
        ));
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| fail(dir, format!("cannot read cargo metadata: {e}")))?;
    let packages = meta["packages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for package in packages.iter().filter(|p| p["source"].is_null()) {
        let targets = package["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for target in targets {
            let kinds = target["kind"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            if kinds.iter().any(|k| k == "custom-build") {
                return Err(fail(
                    dir,
                    format!(
                        "package `{}` has a build script ({}), which would run natively with your \
                         rights: refused; build the .wasm yourself and pass that, or allow \
                         build scripts for a project you trust ({ALLOW_ENV}=1, or \
                         BuildOptions::allow_build_scripts)",
                        package["name"].as_str().unwrap_or("?"),
                        target["src_path"].as_str().unwrap_or("build.rs"),
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Builds the guest crate in `dir` (release, `wasm32-wasip2`) and returns its `.wasm`.
pub(crate) fn build(dir: &Path, options: &BuildOptions) -> Result<PathBuf> {
    let dir = &dir
        .canonicalize()
        .map_err(|e| fail(dir, format!("cannot read: {e}")))?;
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(fail(
            dir,
            "a MODULE directory must be a guest Cargo project (no Cargo.toml there)",
        ));
    }
    if !build_scripts_allowed(options) {
        refuse_build_scripts(dir, &manifest)?;
    }
    ensure_target(dir)?;
    let mut cmd = nested_cargo(dir);
    cmd.args([
        "build",
        "--release",
        "--target",
        TARGET,
        "--message-format=json-render-diagnostics",
        "--manifest-path",
    ])
    .arg(&manifest);
    let out = cmd
        .output()
        .map_err(|e| fail(dir, format!("cannot run cargo: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(fail(
            dir,
            format!("cargo build failed ({}):\n{}", out.status, tail.join("\n")),
        ));
    }
    let mut wasm = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact"
            || msg["manifest_path"].as_str().map(Path::new) != Some(manifest.as_path())
        {
            continue;
        }
        if let Some(files) = msg["filenames"].as_array() {
            for f in files.iter().filter_map(|f| f.as_str()) {
                if f.ends_with(".wasm") {
                    wasm = Some(PathBuf::from(f));
                }
            }
        }
    }
    wasm.ok_or_else(|| {
        fail(
            dir,
            "cargo built no .wasm: the crate needs `[lib] crate-type = [\"cdylib\"]`",
        )
    })
}
