//! `wasmpool serve`: a multi-tenant task service over HTTP.
//!
//! Tenants are named in a TOML file ([`tenants`]) with the SHA-256 of their bearer token,
//! a weight and quotas. Accepted work is kept in SQLite under the state directory, so a task
//! answered with 202 runs even across a restart; results expire after the tenant's TTL.
//! Tasks run in one [`wasmpool::Runtime`], on one shared [`wasmpool::Pool`] per module.
//!
//! ```no_run
//! let config = wasmpool_serve::Config::new("127.0.0.1:8080", "tenants.toml");
//! wasmpool_serve::run(config)?;
//! # Ok::<(), wasmpool_serve::ServeError>(())
//! ```

#![deny(missing_docs)]

mod api;
mod app;
mod dispatch;
mod error;
mod execute;
mod hangup;
mod metrics;
mod objects;
mod pool_cache;
mod problem;
mod rate;
mod store;
pub mod tenants;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use error::ServeError;
pub use tenants::add_tenant;

/// How to run the service.
#[derive(Debug, Clone)]
pub struct Config {
    /// The address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// The tenants file.
    pub tenants: PathBuf,
    /// The state directory (SQLite file, uploaded modules).
    pub state: PathBuf,
    /// Worker processes per module's pool (default: the CPU count, at most 8).
    pub workers: usize,
    /// Pools kept alive at once, the least recently used dropped past it (default 8).
    pub max_pools: usize,
    /// Items in the pools at once, across tenants (default: 4 per worker).
    pub max_inflight: usize,
    /// The largest JSON or NDJSON body (default 8 MiB).
    pub max_body_bytes: usize,
    /// The largest module upload (default 64 MiB).
    pub max_module_bytes: usize,
    /// How long a request's body may take to arrive (default 10 s).
    pub body_timeout: Duration,
    /// How long a request's line and headers may take to arrive, and how long a kept-alive
    /// connection may sit idle (default 30 s): a client that stalls is disconnected.
    pub header_timeout: Duration,
    /// The longest `?wait=` honoured (default 60 s).
    pub max_wait: Duration,
    /// Run the tasks on the hosts of the cluster whose Redis is at this URL, each tenant's
    /// on its own task stream (hosts joined with `--all-tenants` serve them all), rather
    /// than in local pools (default: local).
    pub cluster: Option<String>,
}

impl Config {
    /// The defaults, listening on `listen`, with tenants from `tenants` and the state in
    /// [`default_state_dir`].
    pub fn new(listen: impl Into<String>, tenants: impl Into<PathBuf>) -> Config {
        let workers = wasmpool::cpu_count().clamp(1, 8);
        Config {
            listen: listen.into(),
            tenants: tenants.into(),
            state: default_state_dir(),
            workers,
            max_pools: 8,
            max_inflight: workers * 4,
            max_body_bytes: 8 << 20,
            max_module_bytes: 64 << 20,
            body_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            max_wait: Duration::from_secs(60),
            cluster: None,
        }
    }
}

/// `$XDG_DATA_HOME/wasmpool/serve`, else `~/.local/share/wasmpool/serve`, else
/// `./wasmpool-serve`.
pub fn default_state_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")));
    match base {
        Some(b) => b.join("wasmpool").join("serve"),
        None => PathBuf::from("wasmpool-serve"),
    }
}

/// Runs the service until the process is stopped. Prints `listening on http://ADDR` (the
/// bound address) as the first line on stdout once it accepts connections.
pub fn run(config: Config) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("wasmpool-serve")
        .build()
        .map_err(|e| ServeError::io("starting the async runtime", e))?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> Result<(), ServeError> {
    let registry = tenants::Registry::load_checked(&config.tenants, config.cluster.is_some())?;
    let store = store::Store::open(&config.state)?;
    let modules_dir = config.state.join("modules");
    std::fs::create_dir_all(&modules_dir)
        .map_err(|e| ServeError::io(format!("creating {}", modules_dir.display()), e))?;
    let runtime = wasmpool::Runtime::builder().build()?;
    let exec = execute::Executor::new(runtime, modules_dir, config.workers, config.max_pools)
        .with_cluster(config.cluster.clone());
    let app = Arc::new(app::App::new(
        registry,
        store,
        exec,
        dispatch::Dispatcher::new(config.max_inflight),
        app::HttpLimits {
            max_body_bytes: config.max_body_bytes,
            max_module_bytes: config.max_module_bytes,
            body_timeout: config.body_timeout,
            max_wait: config.max_wait,
        },
    ));
    let (lost, queued) = app.recover()?;
    if lost + queued > 0 {
        tracing::info!("recovered {queued} queued tasks; {lost} interrupted ones failed");
    }
    tokio::spawn(app::dispatch_loop(app.clone()));
    tokio::spawn(app::reload_loop(app.clone()));
    tokio::spawn(app::sweep_loop(app.clone()));
    tokio::spawn(app::checkpoint_loop(app.clone()));
    hangup::reload_on_sighup(app.clone());
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| ServeError::io(format!("listening on {}", config.listen), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::io("reading the bound address", e))?;
    {
        let mut out = std::io::stdout().lock();
        // A closed stdout is no reason to stop serving.
        let _ = writeln!(out, "listening on http://{addr}");
        let _ = out.flush();
    }
    let request_timeout = config.body_timeout + config.max_wait + Duration::from_secs(5);
    accept_loop(
        listener,
        api::router(app, request_timeout),
        config.header_timeout,
    )
    .await;
    Ok(())
}

/// Serves each connection accepted on `listener` with `router` (HTTP/1.1, kept alive), for
/// ever. A connection whose request line and headers do not all arrive within
/// `header_timeout` (or that sits idle that long between requests) is closed.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    header_timeout: Duration,
) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait a little, keep serving.
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
}
