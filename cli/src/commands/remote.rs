//! The commands as a client of `wasmpool serve`: with `--server URL --token-file FILE`,
//! `run`, `map` and `tasks` upload the module (once: the service keeps it by SHA-256),
//! submit to the service and print what it answers as the local commands print it.
//! Problem answers (`application/problem+json`) become one clear error line.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Where the service is, for the commands that run tasks.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Run on the `wasmpool serve` at this URL (`http://HOST:PORT`) instead of locally.
    #[arg(long, value_name = "URL", env = "WASMPOOL_SERVER")]
    pub server: Option<String>,
    /// With --server: the file holding the tenant's token (the line `wasmpool tenant add`
    /// printed).
    #[arg(long, value_name = "FILE", env = "WASMPOOL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// With --server: how long to wait for the service to answer a request, in seconds
    /// (the time a task runs is not counted).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub server_timeout: f64,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// A flag set by Ctrl-C from now on (instead of the default, which ends the program).
pub fn interrupt_flag() -> &'static AtomicBool {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    &INTERRUPTED
}

/// The longest `?wait=` asked for at a time; a longer task is waited for again.
const WAIT_S: u64 = 30;

impl ServerArgs {
    /// The service these flags name, or `None` to run locally.
    pub fn connect(&self) -> Result<Option<Remote>> {
        let Some(url) = &self.server else {
            return Ok(None);
        };
        let base = url.trim_end_matches('/');
        let host = base.strip_prefix("http://").ok_or_else(|| {
            anyhow!(
                "--server {url}: the URL must start with http:// (this client speaks plain \
                 HTTP; put TLS in front of the service with a proxy)"
            )
        })?;
        if host.is_empty() || host.contains('/') {
            bail!("--server {url}: the URL must be http://HOST:PORT, with no path");
        }
        let Some(path) = &self.token_file else {
            bail!(
                "--server needs --token-file FILE (or WASMPOOL_TOKEN_FILE): the file holding \
                 the tenant's token"
            );
        };
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --token-file {}", path.display()))?;
        let token = token.trim();
        if token.is_empty() {
            bail!("--token-file {}: the file is empty", path.display());
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            bail!(
                "--token-file {}: the token must be one line of visible ASCII characters",
                path.display()
            );
        }
        let timeout = Duration::try_from_secs_f64(self.server_timeout)
            .ok()
            .filter(|d| !d.is_zero() && d.as_secs() <= 3600)
            .ok_or_else(|| {
                anyhow!(
                    "--server-timeout {}: must be above 0 and at most 3600 seconds",
                    self.server_timeout
                )
            })?;
        let http = Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            // Set per request: a stream of results has none.
            .timeout(None)
            .build()
            .context("starting the HTTP client")?;
        Ok(Some(Remote {
            http,
            base: base.to_string(),
            token: token.to_string(),
            timeout,
        }))
    }
}

/// A connection to the service, as one tenant.
#[derive(Debug)]
pub struct Remote {
    http: Client,
    base: String,
    token: String,
    timeout: Duration,
}

/// A module the service holds for this tenant.
#[derive(Debug)]
pub struct RemoteModule {
    /// Its SHA-256 (hex).
    pub sha256: String,
    /// Its tasks, in the module's order.
    pub tasks: Vec<String>,
}

impl Remote {
    fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Sends `request`; a 2xx answer is returned, anything else is an error that says what
    /// the service answered. A 429 is tried again after its `Retry-After` (a few times).
    fn send(&self, what: &str, request: RequestBuilder) -> Result<Response> {
        let mut tries = 0;
        loop {
            let attempt = request
                .try_clone()
                .ok_or_else(|| anyhow!("{what}: the request cannot be sent twice"))?;
            let response = attempt.send().map_err(|e| self.transport_error(what, &e))?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if status.as_u16() == 429
                && tries < 5
                && let Some(seconds) = retry_after
            {
                tries += 1;
                std::thread::sleep(Duration::from_secs(seconds.clamp(1, 5)));
                continue;
            }
            return Err(problem_error(what, response));
        }
    }

    fn transport_error(&self, what: &str, e: &reqwest::Error) -> anyhow::Error {
        if e.is_connect() {
            anyhow!(
                "cannot reach the service at {}: {}",
                self.base,
                root_cause(e)
            )
        } else if e.is_timeout() {
            anyhow!(
                "{what}: the service at {} did not answer within {} s (see --server-timeout)",
                self.base,
                self.timeout.as_secs_f64()
            )
        } else {
            anyhow!(
                "{what}: talking to the service at {}: {}",
                self.base,
                root_cause(e)
            )
        }
    }

    /// The module at `path` on the service: uploaded unless the service already holds
    /// one of its SHA-256 for this tenant. A guest project is built here first, as
    /// locally.
    pub fn module(&self, path: &Path) -> Result<RemoteModule> {
        let bytes = module_bytes(path)?;
        let sha256 = hex(&Sha256::digest(&bytes));
        let known = self
            .request(reqwest::Method::GET, &format!("/v1/modules/{sha256}"))
            .timeout(self.timeout)
            .send()
            .map_err(|e| self.transport_error("looking up the module", &e))?;
        let answer: Value = if known.status().is_success() {
            read_json("looking up the module", known)?
        } else if known.status().as_u16() == 404 {
            let request = self
                .request(reqwest::Method::POST, "/v1/modules")
                .header(reqwest::header::CONTENT_TYPE, "application/wasm")
                // A large module takes its time to send.
                .timeout(self.timeout + Duration::from_secs((bytes.len() >> 20) as u64))
                .body(bytes);
            read_json(
                "uploading the module",
                self.send("uploading the module", request)?,
            )?
        } else {
            return Err(problem_error("looking up the module", known));
        };
        let tasks = answer["tasks"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .ok_or_else(|| anyhow!("the service's answer for the module has no task list"))?;
        Ok(RemoteModule { sha256, tasks })
    }

    /// The tenant's fuel ceiling, if it has one.
    fn max_fuel(&self) -> Result<Option<u64>> {
        let request = self
            .request(reqwest::Method::GET, "/v1/quota")
            .timeout(self.timeout);
        let quota = read_json(
            "reading the quota",
            self.send("reading the quota", request)?,
        )?;
        Ok(quota["quotas"]["max_fuel"].as_u64())
    }

    /// The `limits` of a submission for these flags: what is not given is left to the
    /// service (the tenant's ceilings); `--show-fuel` alone meters without a limit.
    pub fn limits(&self, flags: &super::LimitArgs) -> Result<Value> {
        // Checked as locally: the same flags are refused with the same words.
        flags.limits()?;
        if flags.max_stack != super::LimitArgs::DEFAULT_STACK_KIB {
            bail!("--max-stack is not supported with --server (the service sets the stack)");
        }
        let mut limits = serde_json::Map::new();
        if let Some(m) = flags.memory {
            limits.insert("memory_mib".into(), json!(m));
        }
        if let Some(m) = flags.max_output {
            limits.insert("output_mib".into(), json!(m));
        }
        if let Some(t) = flags.timeout {
            limits.insert("timeout_s".into(), json!(t));
        }
        match flags.fuel {
            Some(f) => {
                limits.insert("fuel".into(), json!(f));
            }
            // A tenant with a fuel ceiling is metered anyway; one without is asked to meter.
            None if flags.show_fuel && self.max_fuel()?.is_none() => {
                limits.insert("fuel".into(), json!(u64::MAX));
            }
            None => {}
        }
        Ok(Value::Object(limits))
    }

    /// Submits task `task` of `module` with `args` and waits for it to finish; answers the
    /// task as the service shows it (`state` `done`, with `result` or `error`).
    pub fn run_task(&self, body: &Value, interrupted: &AtomicBool) -> Result<TaskAnswer> {
        let request = self
            .request(reqwest::Method::POST, &format!("/v1/tasks?wait={WAIT_S}"))
            .timeout(self.timeout + Duration::from_secs(WAIT_S))
            .json(body);
        let mut task = read_task(
            "submitting the task",
            self.send("submitting the task", request)?,
        )?;
        let id = task.view["id"]
            .as_str()
            .ok_or_else(|| anyhow!("the service's answer to the submission has no id"))?
            .to_string();
        while task.view["state"] != "done" {
            if interrupted.load(Ordering::SeqCst) {
                let request = self
                    .request(reqwest::Method::POST, &format!("/v1/tasks/{id}/cancel"))
                    .timeout(self.timeout);
                // Interrupted: whether the cancel took or not, the command ends.
                let _ = request.send();
                bail!("interrupted; task {id} was cancelled on the service");
            }
            // Short waits while a Ctrl-C may come; each wait ends when the task is done.
            let request = self
                .request(reqwest::Method::GET, &format!("/v1/tasks/{id}?wait=1"))
                .timeout(self.timeout + Duration::from_secs(1));
            task = read_task(
                "waiting for the task",
                self.send("waiting for the task", request)?,
            )?;
        }
        Ok(task)
    }

    /// Submits a map of `items` (NDJSON) with the query `params`; answers its id and total.
    pub fn submit_map(&self, params: &[(&str, String)], items: Vec<u8>) -> Result<(String, u64)> {
        let request = self
            .request(reqwest::Method::POST, "/v1/maps")
            .query(params)
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .timeout(self.timeout + Duration::from_secs((items.len() >> 20) as u64))
            .body(items);
        let answer = read_json(
            "submitting the map",
            self.send("submitting the map", request)?,
        )?;
        let id = answer["id"]
            .as_str()
            .ok_or_else(|| anyhow!("the service's answer to the map has no id"))?;
        Ok((id.to_string(), answer["total"].as_u64().unwrap_or(0)))
    }

    /// The map's records as they come (`ordered`: in input order, else as completed).
    pub fn map_results(&self, id: &str, ordered: bool) -> Result<BufReader<Response>> {
        let order = if ordered { "input" } else { "completed" };
        // No timeout: items take as long as they take; Ctrl-C ends the wait.
        let request = self.request(
            reqwest::Method::GET,
            &format!("/v1/maps/{id}/results?order={order}"),
        );
        Ok(BufReader::new(
            self.send("reading the map's results", request)?,
        ))
    }

    /// Cancels what of map `id` has not finished.
    pub fn cancel_map(&self, id: &str) -> Result<()> {
        let request = self
            .request(reqwest::Method::POST, &format!("/v1/maps/{id}/cancel"))
            .timeout(self.timeout);
        self.send("cancelling the map", request)?;
        Ok(())
    }
}

/// The innermost cause of a transport error (hyper's and the OS's words, not reqwest's
/// "error sending request for url").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// An error for a non-2xx answer: the problem's detail and code when it is one.
fn problem_error(what: &str, response: Response) -> anyhow::Error {
    let status = response.status();
    let text = response.text().unwrap_or_default();
    match serde_json::from_str::<Value>(&text) {
        Ok(p) if p.get("code").is_some() => {
            let code = p["code"].as_str().unwrap_or("");
            let detail = p["detail"].as_str().unwrap_or("");
            let field = p["field"]
                .as_str()
                .map(|f| format!(" (field `{f}`)"))
                .unwrap_or_default();
            anyhow!(
                "{what}: the service answered {} {code}: {detail}{field}",
                status.as_u16()
            )
        }
        _ => {
            let text: String = text.trim().chars().take(200).collect();
            anyhow!("{what}: the service answered {status}: {text}")
        }
    }
}

fn read_json(what: &str, response: Response) -> Result<Value> {
    response
        .json()
        .with_context(|| format!("{what}: the service's answer is not JSON"))
}

/// A task as the service answered it: its view, and its result's JSON text as the service
/// sent it (a map's entries in the order the task wrote them, which a [`Value`] would sort).
#[derive(Debug)]
pub struct TaskAnswer {
    view: Value,
    result: Option<Box<serde_json::value::RawValue>>,
}

fn read_task(what: &str, response: Response) -> Result<TaskAnswer> {
    #[derive(serde::Deserialize)]
    struct ResultText {
        #[serde(default)]
        result: Option<Box<serde_json::value::RawValue>>,
    }
    let text = response
        .text()
        .with_context(|| format!("{what}: reading the service's answer"))?;
    let not_json = || format!("{what}: the service's answer is not JSON");
    let view = serde_json::from_str(&text).with_context(not_json)?;
    let ResultText { result } = serde_json::from_str(&text).with_context(not_json)?;
    Ok(TaskAnswer { view, result })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The component's bytes: a `.wasm` file as it is, a guest project (or Python guest) built
/// as `Module::load` builds it.
fn module_bytes(path: &Path) -> Result<Vec<u8>> {
    let is_py = path.extension().is_some_and(|e| e == "py");
    if path.is_file() && !is_py {
        let size = std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        if size > wasmpool::MAX_MODULE_BYTES {
            bail!(
                "{}: is {size} bytes; the limit is {}",
                path.display(),
                wasmpool::MAX_MODULE_BYTES
            );
        }
        return std::fs::read(path).with_context(|| format!("cannot read {}", path.display()));
    }
    Ok(wasmpool::Module::load(path)?.bytes()?.to_vec())
}

/// Refuses, by name, a flag the service does not carry out.
pub fn refuse(given: bool, flag: &str, why: &str) -> Result<()> {
    if given {
        bail!("{flag} is not supported with --server ({why})");
    }
    Ok(())
}

/// `wasmpool tasks MODULE --server …`.
pub fn tasks(remote: &Remote, module: &Path, as_json: bool) -> Result<ExitCode> {
    let tasks = remote.module(module)?.tasks;
    let mut out = std::io::stdout().lock();
    if as_json {
        writeln!(out, "{}", serde_json::to_string(&tasks)?)?;
    } else {
        for t in tasks {
            writeln!(out, "{t}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a finished task as local `run` does: its output to stdout and stderr, then its
/// result as one JSON line, the text the service sent (exit 0), or `wasmpool: ERROR` on
/// stderr (exit 1).
pub fn print_task(answer: &TaskAnswer, task: &str, show_fuel: bool) -> Result<ExitCode> {
    let view = &answer.view;
    for (field, to_stdout) in [("stdout", true), ("stderr", false)] {
        if let Some(text) = view[field].as_str() {
            if to_stdout {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes())?;
                out.flush()?;
            } else {
                let _ = std::io::stderr().lock().write_all(text.as_bytes());
            }
        }
    }
    let show_fuel = || {
        if show_fuel && let Some(fuel) = view["usage"]["fuel"].as_u64() {
            eprintln!("wasmpool: task `{task}` used {fuel} fuel");
        }
    };
    show_fuel();
    if let Some(error) = view.get("error") {
        let message = error["message"].as_str().unwrap_or("the task failed");
        eprintln!("wasmpool: {message}");
        return Ok(ExitCode::from(1));
    }
    let mut out = std::io::stdout().lock();
    match &answer.result {
        Some(text) => out.write_all(text.get().as_bytes())?,
        None => out.write_all(b"null")?,
    }
    writeln!(out)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// What `wasmpool map … --server` asks for.
pub struct MapRequest<'a> {
    /// The module's file or project.
    pub module: &'a Path,
    /// The task.
    pub task: &'a str,
    /// The inputs (each a line of JSON).
    pub inputs: Box<dyn Iterator<Item = Result<Value, wasmpool::lines::LinesError>> + 'a>,
    /// Each input is an array of arguments.
    pub star: bool,
    /// Inputs per chunk.
    pub chunksize: usize,
    /// Records in input order.
    pub ordered: bool,
    /// Retries of an item whose worker died.
    pub retries: u32,
    /// The limits' JSON (see [`Remote::limits`]).
    pub limits: Value,
    /// Where the records go (stdout if `None`).
    pub output: Option<&'a Path>,
}

impl std::fmt::Debug for MapRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapRequest")
            .field("module", &self.module)
            .field("task", &self.task)
            .field("chunksize", &self.chunksize)
            .finish_non_exhaustive()
    }
}

/// `wasmpool map … --server`: submits the inputs as one map and writes its records as
/// they come, as local `map` writes them (same lines, same summary, same exit status).
pub fn map(remote: &Remote, req: MapRequest<'_>, interrupted: &AtomicBool) -> Result<ExitCode> {
    let module = remote.module(req.module)?;
    if !module.tasks.iter().any(|t| t == req.task) {
        bail!(
            "module {} has no task `{}`; its tasks are: {}",
            req.module.display(),
            req.task,
            module.tasks.join(", ")
        );
    }
    // The inputs up to the first bad one run; the bad one is reported after their records.
    let mut body = Vec::new();
    let mut bad_input = None;
    let mut count = 0u64;
    for input in req.inputs {
        match input {
            Ok(v) => {
                serde_json::to_writer(&mut body, &v)?;
                body.push(b'\n');
                count += 1;
            }
            Err(e) => {
                bad_input = Some(e);
                break;
            }
        }
    }
    let mut out: Box<dyn Write> = match req.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let (mut done, mut failed, mut first_error) = (0u64, 0u64, None::<String>);
    if count > 0 {
        let mut params = vec![
            ("module", module.sha256.clone()),
            ("task", req.task.to_string()),
            ("chunksize", req.chunksize.to_string()),
            ("ordered", req.ordered.to_string()),
            ("star", req.star.to_string()),
            ("retries", req.retries.to_string()),
        ];
        if let Value::Object(limits) = &req.limits {
            for (k, v) in limits {
                let key = match k.as_str() {
                    "memory_mib" => "memory_mib",
                    "output_mib" => "output_mib",
                    "timeout_s" => "timeout_s",
                    _ => "fuel",
                };
                params.push((key, v.to_string()));
            }
        }
        let (id, total) = remote.submit_map(&params, body)?;
        let bar = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        } else {
            ProgressBar::hidden()
        };
        // Ctrl-C: the map is cancelled on the service, which ends the stream soon after.
        let finished = AtomicBool::new(false);
        let streamed = std::thread::scope(|scope| -> Result<()> {
            scope.spawn(|| {
                while !finished.load(Ordering::SeqCst) {
                    if interrupted.load(Ordering::SeqCst) {
                        let _ = remote.cancel_map(&id);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
            let result = (|| -> Result<()> {
                let mut records = remote.map_results(&id, req.ordered)?;
                let mut line = String::new();
                while done < total {
                    line.clear();
                    let n = records
                        .read_line(&mut line)
                        .context("reading the map's results from the service")?;
                    if n == 0 {
                        bail!(
                            "the service ended the map's results after {done} of {total} \
                             (expired, or the service stopped)"
                        );
                    }
                    if interrupted.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    if let Ok(record) = serde_json::from_str::<Value>(&line)
                        && let Some(error) = record.get("error")
                    {
                        failed += 1;
                        if first_error.is_none() {
                            first_error = Some(error.as_str().unwrap_or_default().to_string());
                        }
                    }
                    out.write_all(line.as_bytes())?;
                    done += 1;
                    bar.inc(1);
                }
                Ok(())
            })();
            finished.store(true, Ordering::SeqCst);
            result
        });
        out.flush()?;
        bar.finish_and_clear();
        streamed?;
    }
    out.flush()?;
    if interrupted.load(Ordering::SeqCst) {
        eprintln!(
            "wasmpool: interrupted after {done} results; the map was cancelled on the service"
        );
        return Ok(ExitCode::from(130));
    }
    if let Some(e) = bad_input {
        return Err(anyhow::Error::from(e).context(format!("after {done} results")));
    }
    if failed > 0 {
        eprintln!(
            "wasmpool: {failed} of {done} items failed; first: {}",
            first_error.unwrap_or_default()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
