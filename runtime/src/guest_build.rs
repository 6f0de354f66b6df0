//! Building a guest Cargo project into a component, for `MODULE` arguments that are
//! directories.
//!
//! The nested cargo gets its own target dir (the guest workspace's default one): sharing the
//! outer build's target dir would deadlock on its lock. The `wasm32-wasip2` target is
//! installed with rustup if it is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::error::{Error, Result};

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

/// Builds the guest crate in `dir` (release, `wasm32-wasip2`) and returns its `.wasm`.
pub(crate) fn build(dir: &Path) -> Result<PathBuf> {
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
    ensure_target(dir)?;
    let mut cmd = Command::new(cargo());
    cmd.args([
        "build",
        "--release",
        "--target",
        TARGET,
        "--message-format=json-render-diagnostics",
        "--manifest-path",
    ])
    .arg(&manifest)
    .current_dir(dir)
    .stdin(Stdio::null());
    for var in OUTER_CARGO_ENV {
        cmd.env_remove(var);
    }
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
