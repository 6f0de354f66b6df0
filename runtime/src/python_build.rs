//! Building a Python guest into a component with componentize-py, for `MODULE` arguments
//! that are a single `.py` file or a directory whose `pyproject.toml` has a
//! `[tool.wasmpool]` table.
//!
//! The toolchain is componentize-py 0.25 (it embeds CPython built for WASI), installed on
//! first use with pip into a virtualenv that wasmpool manages,
//! `<cache_dir>/python/venv-0.25`; it needs a `python3` with `venv` and `pip`
//! (`$WASMPOOL_PYTHON` names another interpreter). `$WASMPOOL_COMPONENTIZE_PY` names a
//! componentize-py binary to use instead of installing one.
//!
//! The guest SDK (`guest-sdk/python/wasmpool_guest`, with its copy of the WIT world) is
//! built into this library and written out next to each build, so a build needs nothing
//! from the source tree. A build is kept in `<cache_dir>/python/builds`, named by the hash
//! of everything that goes into it (the project's files, the SDK, the toolchain's version):
//! loading an unchanged project again does not run componentize-py. The builds (~19 MB
//! each) are kept under the compile cache's bound (`$WASMPOOL_CACHE_MAX_MIB`), the least
//! recently used removed first.
//!
//! As with a Cargo project, building runs the project's code natively (componentize-py runs
//! the module's top level to snapshot it): a project is trusted input, like any source you
//! build.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The componentize-py versions accepted (pip's requirement, and the version prefix checked).
const REQUIREMENT: &str = "componentize-py>=0.25,<0.26";
const VERSION_PREFIX: &str = "componentize-py 0.25.";
/// The WIT world a Python guest targets: the task world with the `batch-bytes` and
/// `batch-packed` exports.
const WORLD: &str = "task-module-batch-packed";
/// The module componentize-py wraps: it imports the user's module and the SDK's exports.
const ENTRY: &str = "wasmpool_component_entry";

/// The SDK's files, relative to `guest-sdk/python/`.
const SDK_FILES: &[(&str, &str)] = &[
    (
        "wasmpool_guest/__init__.py",
        include_str!("../../guest-sdk/python/wasmpool_guest/__init__.py"),
    ),
    (
        "wasmpool_guest/_registry.py",
        include_str!("../../guest-sdk/python/wasmpool_guest/_registry.py"),
    ),
    (
        "wasmpool_guest/_msgpack.py",
        include_str!("../../guest-sdk/python/wasmpool_guest/_msgpack.py"),
    ),
    (
        "wasmpool_guest/_hints.py",
        include_str!("../../guest-sdk/python/wasmpool_guest/_hints.py"),
    ),
    (
        "wasmpool_guest/_vector.py",
        include_str!("../../guest-sdk/python/wasmpool_guest/_vector.py"),
    ),
    (
        "wasmpool_guest/_batch.py",
        include_str!("../../guest-sdk/python/wasmpool_guest/_batch.py"),
    ),
    (
        "wasmpool_guest/_identity.py",
        include_str!("../../guest-sdk/python/wasmpool_guest/_identity.py"),
    ),
    (
        "wasmpool_guest/objects.py",
        include_str!("../../guest-sdk/python/wasmpool_guest/objects.py"),
    ),
    (
        "wasmpool_guest/_exports.py",
        include_str!("../../guest-sdk/python/wasmpool_guest/_exports.py"),
    ),
    (
        "wasmpool_guest/wit/wasmpool.wit",
        include_str!("../../guest-sdk/python/wasmpool_guest/wit/wasmpool.wit"),
    ),
];

/// Directories of a project never hashed (nor meant to be bundled): caches, VCS data,
/// build output.
const SKIPPED_DIRS: &[&str] = &["__pycache__", "target", "node_modules", "build", "dist"];

/// The most files a project may have, and their total size: a guard against pointing at a
/// home directory.
const MAX_PROJECT_FILES: usize = 10_000;
const MAX_PROJECT_BYTES: u64 = 256 << 20;

fn fail(path: &Path, message: impl Into<String>) -> Error {
    Error::GuestBuild {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// What a Python `MODULE` argument is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PythonGuest {
    /// One self-contained `.py` file: only it (and the SDK) is bundled.
    File(PathBuf),
    /// A project directory: its files are on the module path (and `src/`, if there is one);
    /// `module` is the one imported.
    Project {
        /// The project directory.
        dir: PathBuf,
        /// The Python module that registers the tasks.
        module: String,
    },
}

/// Whether `path` is a Python guest: a `.py` file, or a directory with a `pyproject.toml`
/// that has a `[tool.wasmpool]` table. `Ok(None)`: not Python (a `.wasm`, a Cargo project).
pub(crate) fn detect(path: &Path) -> Result<Option<PythonGuest>> {
    if path.is_file() {
        return Ok((path.extension().is_some_and(|e| e == "py"))
            .then(|| PythonGuest::File(path.to_path_buf())));
    }
    let pyproject = path.join("pyproject.toml");
    if !path.is_dir() || !pyproject.is_file() {
        return Ok(None);
    }
    let text = fs::read_to_string(&pyproject)
        .map_err(|e| fail(path, format!("cannot read pyproject.toml: {e}")))?;
    let Some(table) = toml_table(&text, "tool.wasmpool") else {
        return Ok(None);
    };
    let module = match toml_string(&table, "module") {
        Some(m) => m,
        None => match toml_table(&text, "project").and_then(|p| toml_string(&p, "name")) {
            Some(name) => name.replace(['-', '.'], "_"),
            None => {
                return Err(fail(
                    path,
                    "pyproject.toml: [tool.wasmpool] needs `module = \"name\"` (the module \
                     that registers the tasks), or a [project] name",
                ));
            }
        },
    };
    if !is_module_name(&module) {
        return Err(fail(
            path,
            format!("pyproject.toml: `{module}` is not a Python module name"),
        ));
    }
    Ok(Some(PythonGuest::Project {
        dir: path.to_path_buf(),
        module,
    }))
}

/// The lines of TOML table `[name]` (up to the next table header), if it is there. Only
/// what wasmpool reads is understood: `key = "string"` lines in a plain table.
fn toml_table(text: &str, name: &str) -> Option<Vec<String>> {
    let mut lines = text.lines();
    let header = format!("[{name}]");
    lines.find(|l| strip_comment(l).trim() == header)?;
    Some(
        lines
            .take_while(|l| !strip_comment(l).trim_start().starts_with('['))
            .map(str::to_string)
            .collect(),
    )
}

fn strip_comment(line: &str) -> &str {
    // A `#` inside a quoted string is kept: only a `#` outside quotes starts a comment.
    let mut quoted = None;
    for (i, c) in line.char_indices() {
        match (quoted, c) {
            (None, '"' | '\'') => quoted = Some(c),
            (Some(q), c) if c == q => quoted = None,
            (None, '#') => return &line[..i],
            _ => {}
        }
    }
    line
}

/// The string value of `key = "value"` in a table's lines.
fn toml_string(table: &[String], key: &str) -> Option<String> {
    table.iter().find_map(|line| {
        let (k, v) = strip_comment(line).split_once('=')?;
        if k.trim().trim_matches('"') != key {
            return None;
        }
        let v = v.trim();
        let quote = v.chars().next().filter(|c| *c == '"' || *c == '\'')?;
        let inner = v.strip_prefix(quote)?.strip_suffix(quote)?;
        Some(inner.to_string())
    })
}

/// A dotted Python module name (`pkg.mod`), each part an ASCII identifier.
fn is_module_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
                && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
        })
}

/// The Python toolchain's own directory: `<cache_dir>/python`.
fn python_dir() -> Result<PathBuf> {
    let root = crate::module::cache_dir();
    crate::module::private_dir(&root)?;
    let dir = root.join("python");
    crate::module::private_dir(&dir)?;
    Ok(dir)
}

fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn run(cmd: &mut Command) -> std::io::Result<Output> {
    cmd.stdin(Stdio::null()).output()
}

/// A componentize-py binary, installed on first use; its path and its version line.
#[derive(Debug, Clone)]
pub(crate) struct Toolchain {
    /// The componentize-py executable.
    pub(crate) componentize_py: PathBuf,
    /// Its `--version` line, e.g. `componentize-py 0.25.1`.
    pub(crate) version: String,
    /// The virtualenv it runs in (its `VIRTUAL_ENV`), if wasmpool manages it.
    pub(crate) venv: Option<PathBuf>,
}

fn version_of(bin: &Path) -> Option<String> {
    let out = run(Command::new(bin).arg("--version")).ok()?;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && line.starts_with(VERSION_PREFIX)).then_some(line)
}

/// The `--version` line of the componentize-py pip installed in `venv`, read from its
/// package metadata (`componentize_py-X.Y.Z.dist-info`) rather than by running it: starting
/// the interpreter costs more than a cached module's whole `wasmpool run`.
fn installed_version(venv: &Path) -> Option<String> {
    let mut found = Vec::new();
    for lib in fs::read_dir(venv.join("lib")).ok()?.flatten() {
        let Ok(entries) = fs::read_dir(lib.path().join("site-packages")) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if let Some(version) = name
                .to_str()
                .and_then(|n| n.strip_prefix("componentize_py-"))
                .and_then(|n| n.strip_suffix(".dist-info"))
            {
                found.push(format!("componentize-py {version}"));
            }
        }
    }
    // One install, of an accepted version: else ask the binary.
    match found.as_slice() {
        [one] if one.starts_with(VERSION_PREFIX) => found.pop(),
        _ => None,
    }
}

/// The toolchain, installing componentize-py into wasmpool's virtualenv if it is missing.
/// Once per process; a failure is tried again on the next call.
pub(crate) fn toolchain() -> Result<Toolchain> {
    static FOUND: Mutex<Option<Toolchain>> = Mutex::new(None);
    let mut found = FOUND.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(t) = found.as_ref() {
        return Ok(t.clone());
    }
    let t = find_or_install()?;
    *found = Some(t.clone());
    Ok(t)
}

fn find_or_install() -> Result<Toolchain> {
    if let Some(bin) = std::env::var_os("WASMPOOL_COMPONENTIZE_PY") {
        let bin = PathBuf::from(bin);
        let version = version_of(&bin).ok_or_else(|| {
            fail(
                &bin,
                format!(
                    "WASMPOOL_COMPONENTIZE_PY does not name a working componentize-py 0.25 \
                     (`{} --version` should say `{VERSION_PREFIX}…`)",
                    bin.display()
                ),
            )
        })?;
        return Ok(Toolchain {
            componentize_py: bin,
            version,
            venv: None,
        });
    }
    let venv = python_dir()?.join("venv-0.25");
    let bin = venv.join("bin").join("componentize-py");
    if let Some(version) = installed_version(&venv).filter(|_| bin.is_file()) {
        return Ok(Toolchain {
            componentize_py: bin,
            version,
            venv: Some(venv),
        });
    }
    if let Some(version) = version_of(&bin) {
        return Ok(Toolchain {
            componentize_py: bin,
            version,
            venv: Some(venv),
        });
    }
    install(&venv)?;
    let version = version_of(&bin).ok_or_else(|| {
        fail(
            &venv,
            "componentize-py was installed but does not run (`componentize-py --version` failed)",
        )
    })?;
    Ok(Toolchain {
        componentize_py: bin,
        version,
        venv: Some(venv),
    })
}

/// Creates the virtualenv `venv` with componentize-py in it: built beside it under a
/// temporary name and renamed into place, so a concurrent install or a killed one never
/// leaves a half-made toolchain where it is looked for.
fn install(venv: &Path) -> Result<()> {
    let python = std::env::var_os("WASMPOOL_PYTHON").unwrap_or_else(|| "python3".into());
    let python_name = PathBuf::from(&python).display().to_string();
    let staging = venv.with_file_name(format!(
        "{}.installing-{}",
        venv.file_name().and_then(|n| n.to_str()).unwrap_or("venv"),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&staging);
    let made = run(Command::new(&python).arg("-m").arg("venv").arg(&staging)).map_err(|e| {
        fail(
            venv,
            format!(
                "Python guests are built with componentize-py, which wasmpool installs with \
                 pip; that needs `{python_name}` (Python 3 with venv and pip), which cannot be \
                 run: {e}. Install Python 3 (e.g. `apt-get install python3 python3-venv`), \
                 or set WASMPOOL_PYTHON to an interpreter, or WASMPOOL_COMPONENTIZE_PY to a \
                 componentize-py 0.25 binary"
            ),
        )
    })?;
    if !made.status.success() {
        let _ = fs::remove_dir_all(&staging);
        return Err(fail(
            venv,
            format!(
                "`{python_name} -m venv` failed ({}), so componentize-py cannot be installed; \
                 on Debian or Ubuntu `apt-get install python3-venv` adds venv and pip:\n{}",
                made.status,
                tail(&made.stderr, 10)
            ),
        ));
    }
    let pip = run(Command::new(staging.join("bin").join("python"))
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            REQUIREMENT,
        ])
        .env_remove("PIP_REQUIRE_VIRTUALENV"))
    .map_err(|e| fail(venv, format!("cannot run pip in the new virtualenv: {e}")))?;
    if !pip.status.success() {
        let _ = fs::remove_dir_all(&staging);
        return Err(fail(
            venv,
            format!(
                "`pip install \"{REQUIREMENT}\"` failed ({}):\n{}",
                pip.status,
                tail(&pip.stderr, 15)
            ),
        ));
    }
    // A virtualenv's scripts name its path: a renamed one keeps working only because pip's
    // entry points are run here through the venv's own `bin/python` path; make them point
    // at the final place instead, as if it had been made there.
    relocate_scripts(&staging, venv);
    match fs::rename(&staging, venv) {
        Ok(()) => Ok(()),
        Err(_) if version_of(&venv.join("bin").join("componentize-py")).is_some() => {
            // Another process installed it first.
            let _ = fs::remove_dir_all(&staging);
            Ok(())
        }
        Err(_) => {
            // A broken one is in the way: replace it.
            let _ = fs::remove_dir_all(venv);
            fs::rename(&staging, venv).map_err(|e| {
                let _ = fs::remove_dir_all(&staging);
                Error::io(
                    format!("cannot move the new virtualenv to {}", venv.display()),
                    e,
                )
            })
        }
    }
}

/// Rewrites the absolute staging path in the virtualenv's `bin/` scripts and
/// `pyvenv.cfg` to its final path.
fn relocate_scripts(staging: &Path, venv: &Path) {
    let (Some(from), Some(to)) = (staging.to_str(), venv.to_str()) else {
        return;
    };
    let mut files: Vec<PathBuf> = fs::read_dir(staging.join("bin"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.push(staging.join("pyvenv.cfg"));
    for file in files {
        let Ok(meta) = fs::symlink_metadata(&file) else {
            continue;
        };
        if !meta.is_file() || meta.len() > 1 << 20 {
            continue;
        }
        if let Ok(text) = fs::read_to_string(&file)
            && text.contains(from)
        {
            let _ = fs::write(&file, text.replace(from, to));
        }
    }
}

/// The files of a project, relative to `dir`, sorted: every regular file outside hidden,
/// cache and build directories and outside virtualenvs.
fn project_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut bytes = 0u64;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let here = dir.join(&rel);
        let entries = fs::read_dir(&here)
            .map_err(|e| fail(dir, format!("cannot read {}: {e}", here.display())))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name_str) = name.to_str() else {
                continue;
            };
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = rel.join(&name);
            if kind.is_dir() {
                let skip = name_str.starts_with('.')
                    || SKIPPED_DIRS.contains(&name_str)
                    || entry.path().join("pyvenv.cfg").exists();
                if !skip {
                    stack.push(path);
                }
            } else if kind.is_file() && !name_str.ends_with(".pyc") {
                bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
                out.push(path);
                if out.len() > MAX_PROJECT_FILES || bytes > MAX_PROJECT_BYTES {
                    return Err(fail(
                        dir,
                        format!(
                            "the project has more than {MAX_PROJECT_FILES} files or \
                             {} MiB: is this the right directory?",
                            MAX_PROJECT_BYTES >> 20
                        ),
                    ));
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// What a build needs: the directories on the module path, the module imported, and the
/// hash of every input.
struct Plan {
    /// `(directory, files to copy into it)`: for a single file, a staging copy.
    paths: Vec<PathBuf>,
    single_file: Option<(PathBuf, String)>,
    module: String,
    key: String,
}

fn plan(guest: &PythonGuest, toolchain: &Toolchain) -> Result<Plan> {
    let mut h = Sha256::new();
    let mut feed = |tag: &str, bytes: &[u8]| {
        h.update((tag.len() as u64).to_le_bytes());
        h.update(tag.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    feed("format", b"wasmpool-python-build-2");
    feed("toolchain", toolchain.version.as_bytes());
    for (name, text) in SDK_FILES {
        feed(name, text.as_bytes());
    }
    let (paths, single_file, module) = match guest {
        PythonGuest::File(file) => {
            let stem = file
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            if !is_module_name(&stem) || stem == ENTRY || stem == "wasmpool_guest" {
                return Err(fail(
                    file,
                    format!(
                        "`{stem}` is not usable as a Python module name: name the file like a \
                         module (letters, digits, `_`), e.g. `tasks.py`"
                    ),
                ));
            }
            let source = fs::read(file).map_err(|e| fail(file, format!("cannot read: {e}")))?;
            feed("single-file", stem.as_bytes());
            feed("source", &source);
            let text =
                String::from_utf8(source).map_err(|_| fail(file, "the file is not UTF-8 text"))?;
            (
                Vec::new(),
                Some((PathBuf::from(format!("{stem}.py")), text)),
                stem,
            )
        }
        PythonGuest::Project { dir, module } => {
            feed("project-module", module.as_bytes());
            for rel in project_files(dir)? {
                let bytes = fs::read(dir.join(&rel))
                    .map_err(|e| fail(dir, format!("cannot read {}: {e}", rel.display())))?;
                feed(&rel.to_string_lossy(), &bytes);
            }
            let mut paths = vec![dir.clone()];
            if dir.join("src").is_dir() {
                paths.push(dir.join("src"));
            }
            (paths, None, module.clone())
        }
    };
    let key: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Plan {
        paths,
        single_file,
        module,
        key,
    })
}

/// Builds the Python guest and returns the component's path in the build cache.
pub(crate) fn build(guest: &PythonGuest) -> Result<PathBuf> {
    let origin = match guest {
        PythonGuest::File(f) => f.clone(),
        PythonGuest::Project { dir, .. } => dir.clone(),
    };
    let origin = origin
        .canonicalize()
        .map_err(|e| fail(&origin, format!("cannot read: {e}")))?;
    let guest = match guest {
        PythonGuest::File(_) => PythonGuest::File(origin.clone()),
        PythonGuest::Project { module, .. } => PythonGuest::Project {
            dir: origin.clone(),
            module: module.clone(),
        },
    };
    let toolchain = toolchain()?;
    let plan = plan(&guest, &toolchain)?;
    let builds = python_dir()?.join("builds");
    crate::module::private_dir(&builds)?;
    let out = builds.join(format!("{}.wasm", plan.key));
    if out.is_file() {
        // Its last use, for eviction: the time of a file beside it, not its own, which
        // would change its stamp and have the compile cache hash it again (see `stamps`).
        let _ = fs::File::options()
            .write(true)
            .create(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(used_file(&out))
            .and_then(|f| f.set_modified(SystemTime::now()));
        return Ok(out);
    }
    // A stage of this build's own: two threads of one process may build the same project
    // at once (the second finding no build yet), and must not clear each other's files.
    static STAGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = STAGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stage = builds.join(format!(
        "stage-{}-{}-{n}",
        &plan.key[..16],
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&stage);
    let result = build_in(&stage, &origin, &plan, &toolchain, &out);
    let _ = fs::remove_dir_all(&stage);
    result?;
    tidy_builds(&builds, &out, crate::module::cache_files::max_bytes()?);
    Ok(out)
}

/// The file whose time tells when the build `wasm` was last used.
fn used_file(wasm: &Path) -> PathBuf {
    wasm.with_extension("used")
}

/// Keeps the builds in `builds` under `max` bytes, removing the least recently used first
/// (never `keep`, the one just made), as the compile cache does with its artifacts; and
/// removes staging directories that builds killed long ago left.
fn tidy_builds(builds: &Path, keep: &Path, max: u64) {
    let Ok(entries) = fs::read_dir(builds) else {
        return;
    };
    let now = SystemTime::now();
    let mut total = 0u64;
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let path = entry.path();
        let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("stage-") && meta.is_dir() {
            if now.duration_since(used).unwrap_or_default() > STALE_STAGE {
                let _ = fs::remove_dir_all(&path);
            }
            continue;
        }
        if name.ends_with(".used") && !path.with_extension("wasm").exists() {
            let _ = fs::remove_file(&path);
            continue;
        }
        if !meta.is_file() || !name.ends_with(".wasm") {
            continue;
        }
        total = total.saturating_add(meta.len());
        if path != keep {
            // Its last use: when it was made, or the time of the file beside it.
            let used = fs::metadata(used_file(&path))
                .and_then(|m| m.modified())
                .map_or(used, |u| u.max(used));
            found.push((used, path, meta.len()));
        }
    }
    found.sort();
    for (_, path, len) in found {
        if total <= max {
            break;
        }
        if fs::remove_file(&path).is_ok() {
            total -= len;
        }
        let _ = fs::remove_file(used_file(&path));
    }
}

/// A staging directory older than this was left by a build that was killed.
const STALE_STAGE: Duration = Duration::from_secs(3600);

fn build_in(
    stage: &Path,
    origin: &Path,
    plan: &Plan,
    toolchain: &Toolchain,
    out: &Path,
) -> Result<()> {
    let io = |what: &str, e| Error::io(format!("{what} in {}", stage.display()), e);
    let sdk = stage.join("sdk");
    for (name, text) in SDK_FILES {
        let path = sdk.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| io("cannot create the SDK", e))?;
        }
        fs::write(&path, text).map_err(|e| io("cannot write the SDK", e))?;
    }
    let entry_dir = stage.join("entry");
    fs::create_dir_all(&entry_dir).map_err(|e| io("cannot create the build", e))?;
    fs::write(
        entry_dir.join(format!("{ENTRY}.py")),
        format!(
            "# Generated by wasmpool: the module componentize-py wraps.\n\
             # The SDK first: it makes os.getpid() and the like answer as a worker's,\n\
             # even for names the module imports from os at its top.\n\
             import wasmpool_guest._exports\n\
             import {module}  # the tasks register themselves as it is imported\n\
             from wasmpool_guest._exports import BatchBytes, BatchPacked, Tasks\n",
            module = plan.module
        ),
    )
    .map_err(|e| io("cannot write the entry module", e))?;
    let mut paths = vec![entry_dir.clone()];
    if let Some((name, text)) = &plan.single_file {
        let app = stage.join("app");
        fs::create_dir_all(&app).map_err(|e| io("cannot create the build", e))?;
        fs::write(app.join(name), text).map_err(|e| io("cannot copy the module", e))?;
        paths.push(app);
    }
    paths.extend(plan.paths.iter().cloned());
    paths.push(sdk.clone());
    let built = stage.join("component.wasm");
    let mut cmd = Command::new(&toolchain.componentize_py);
    cmd.current_dir(stage)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYTHONPATH")
        .env_remove("PYTHONHOME")
        // componentize-py is a Rust program: with a backtrace asked for, its error's last
        // lines (what the message keeps) are its own frames, not the Python traceback.
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .arg("-q")
        .arg("-d")
        .arg(sdk.join("wasmpool_guest").join("wit"))
        .arg("-w")
        .arg(WORLD)
        .arg("componentize");
    // Only the toolchain's own site-packages: not whatever environment the caller is in.
    match &toolchain.venv {
        Some(venv) => cmd.env("VIRTUAL_ENV", venv),
        None => cmd.env_remove("VIRTUAL_ENV"),
    };
    for p in &paths {
        cmd.arg("-p").arg(p);
    }
    cmd.arg(ENTRY).arg("-o").arg(&built);
    let done = run(&mut cmd).map_err(|e| {
        fail(
            origin,
            format!("cannot run {}: {e}", toolchain.componentize_py.display()),
        )
    })?;
    if !done.status.success() || !built.is_file() {
        let mut text = tail(&done.stderr, 40);
        if text.is_empty() {
            text = tail(&done.stdout, 40);
        }
        return Err(fail(
            origin,
            format!(
                "componentize-py failed ({}); the module's top level runs at build time, so \
                 an exception there stops the build:\n{text}",
                done.status
            ),
        ));
    }
    fs::rename(&built, out).map_err(|e| Error::io(format!("cannot store {}", out.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdk_carries_the_world_the_host_links() {
        let sdk_wit = SDK_FILES
            .iter()
            .find(|(n, _)| n.ends_with(".wit"))
            .map(|(_, t)| *t);
        assert_eq!(
            sdk_wit,
            Some(include_str!("../../wit/wasmpool.wit")),
            "guest-sdk/python/wasmpool_guest/wit/wasmpool.wit must be a copy of wit/wasmpool.wit"
        );
    }

    #[test]
    fn pyproject_tool_table_names_the_module() {
        let text = "[project]\nname = \"my-tasks\"\n\n[tool.wasmpool] # here\nmodule = \"pkg.tasks\"  # the one\n[tool.other]\nmodule = \"no\"\n";
        let table = toml_table(text, "tool.wasmpool").expect("table");
        assert_eq!(toml_string(&table, "module").as_deref(), Some("pkg.tasks"));
        let project = toml_table(text, "project").expect("project");
        assert_eq!(toml_string(&project, "name").as_deref(), Some("my-tasks"));
        assert!(toml_table("[tool.wasmpoolx]\n", "tool.wasmpool").is_none());
    }

    #[test]
    fn detect_tells_python_guests_apart() {
        let dir = std::env::temp_dir().join(format!("wasmpool-pydetect-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("proj")).expect("mkdir");
        fs::create_dir_all(dir.join("other")).expect("mkdir");
        fs::write(dir.join("t.py"), "").expect("write");
        fs::write(dir.join("t.wasm"), "").expect("write");
        fs::write(
            dir.join("proj/pyproject.toml"),
            "[project]\nname = \"my-tasks\"\n[tool.wasmpool]\n",
        )
        .expect("write");
        fs::write(
            dir.join("other/pyproject.toml"),
            "[project]\nname = \"x\"\n",
        )
        .expect("write");
        assert_eq!(
            detect(&dir.join("t.py")).expect("detect"),
            Some(PythonGuest::File(dir.join("t.py")))
        );
        assert_eq!(detect(&dir.join("t.wasm")).expect("detect"), None);
        assert_eq!(detect(&dir.join("other")).expect("detect"), None);
        assert_eq!(
            detect(&dir.join("proj")).expect("detect"),
            Some(PythonGuest::Project {
                dir: dir.join("proj"),
                module: "my_tasks".into()
            })
        );
        fs::write(
            dir.join("proj/pyproject.toml"),
            "[tool.wasmpool]\nmodule = \"1bad\"\n",
        )
        .expect("write");
        assert!(detect(&dir.join("proj")).is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn builds_over_the_bound_are_evicted_least_recently_used_first() {
        let dir = std::env::temp_dir().join(format!("wasmpool-pyevict-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("stage-old-1")).expect("mkdir");
        fs::create_dir_all(dir.join("stage-new-2")).expect("mkdir");
        let t = SystemTime::now();
        // A file of `bytes`, last modified `secs_ago`.
        let aged = |path: PathBuf, bytes: &[u8], secs_ago: u64| {
            fs::write(&path, bytes).expect("write");
            fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(t - Duration::from_secs(secs_ago)))
                .expect("set time");
            path
        };
        let build =
            |name: &str, secs_ago: u64| aged(dir.join(name), &vec![0u8; 400 << 10], secs_ago);
        let oldest = build("a.wasm", 400);
        let older = build("b.wasm", 300);
        let recent = build("c.wasm", 100);
        let just_made = build("d.wasm", 500);
        let other = build("notes.txt", 900);
        // A build's use since it was made is the time of the file beside it.
        let used = |wasm: &Path, secs_ago: u64| aged(used_file(wasm), b"", secs_ago);
        let oldest_used = used(&oldest, 450);
        let older_used = used(&older, 50);
        let orphan = used(&dir.join("e.wasm"), 10);
        let stale = dir.join("stage-old-1");
        fs::File::open(&stale)
            .and_then(|f| f.set_modified(t - Duration::from_secs(7200)))
            .expect("set time");
        // 1 MiB holds two builds of 400 KiB.
        tidy_builds(&dir, &just_made, 1 << 20);
        assert!(
            !oldest.exists() && !recent.exists(),
            "the least recently used go"
        );
        assert!(!oldest_used.exists(), "with the file of their last use");
        assert!(
            older.exists() && older_used.exists(),
            "the most recently used stays (used 50 s ago, made 300 s ago)"
        );
        assert!(!orphan.exists(), "a last use of no build is removed");
        assert!(
            just_made.exists(),
            "the build just made stays, whatever its time"
        );
        assert!(other.exists(), "only builds are evicted");
        assert!(!stale.exists(), "a stage left long ago is removed");
        assert!(dir.join("stage-new-2").exists(), "a build under way is not");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_installed_version_is_read_from_the_package_metadata() {
        let venv = std::env::temp_dir().join(format!("wasmpool-pyver-{}", std::process::id()));
        let _ = fs::remove_dir_all(&venv);
        let site = venv.join("lib/python3.11/site-packages");
        fs::create_dir_all(site.join("componentize_py-0.25.1.dist-info")).expect("mkdir");
        fs::create_dir_all(site.join("msgpack-1.0.dist-info")).expect("mkdir");
        assert_eq!(
            installed_version(&venv).as_deref(),
            Some("componentize-py 0.25.1"),
            "the same line `componentize-py --version` prints"
        );
        // Two installs, or one of another version: not trusted (the binary is asked).
        fs::create_dir_all(site.join("componentize_py-0.26.0.dist-info")).expect("mkdir");
        assert_eq!(installed_version(&venv), None);
        fs::remove_dir_all(site.join("componentize_py-0.25.1.dist-info")).expect("rm");
        assert_eq!(installed_version(&venv), None);
        let _ = fs::remove_dir_all(&venv);
    }

    #[test]
    fn module_names_are_checked() {
        assert!(is_module_name("tasks"));
        assert!(is_module_name("pkg.sub_mod2"));
        assert!(!is_module_name("my-tasks"));
        assert!(!is_module_name("2x"));
        assert!(!is_module_name("a..b"));
        assert!(!is_module_name("os; import x"));
    }
}
