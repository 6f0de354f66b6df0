//! Shared objects created from the command line by name: `--object counts=dict` makes a
//! Manager dict that any argument written `"@counts"` stands for. After the run, each
//! object's final contents are printed to stderr as one JSON line (bounded; see
//! [`Objects::report`]). The table, the `@NAME` references and the report are the
//! library's ([`wasmpool::lines`]); this file turns the flags into them.

use anyhow::{Result, bail};
use clap::Args;
use serde_json::Value;
use wasmpool::Manager;
use wasmpool::cluster::ClusterManager;
use wasmpool::lines::{Json, ObjectKind, Objects};

/// Shared objects for the tasks, shared by the commands that run tasks.
#[derive(Args, Debug)]
pub struct ObjectArgs {
    /// Create a shared object that arguments written "@NAME" stand for. KIND is queue,
    /// dict, list, pipe, lock, rlock, event, condition, semaphore:N or barrier:N. Its final
    /// contents are printed to stderr when the run ends. Repeatable.
    #[arg(long = "object", value_name = "NAME=KIND")]
    pub objects: Vec<String>,
    /// Send a JSON value into a pipe made by --object NAME=pipe before the tasks start, at
    /// end 0 or 1 (`--send p.0=42`: a task holding end 1 receives 42). Repeatable; sent in
    /// order.
    #[arg(long = "send", value_name = "PIPE.END=JSON")]
    pub sends: Vec<String>,
    /// Close this program's copy of a pipe end after the sends (`--close p.0`), as a parent
    /// closes the end it gave away: a task reading the other end then sees end of file once
    /// it has read what was sent. Repeatable.
    #[arg(long = "close", value_name = "PIPE.END")]
    pub closes: Vec<String>,
}

impl ObjectArgs {
    /// Whether no object, send or close was asked for.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty() && self.sends.is_empty() && self.closes.is_empty()
    }

    /// Creates the objects these flags ask for (in the cluster's Redis, given its URL),
    /// then does the sends and closes.
    pub fn create(&self, cluster: Option<&str>) -> Result<Objects> {
        let manager = Manager::new();
        let in_cluster = match cluster {
            Some(url) if !self.objects.is_empty() => Some(ClusterManager::connect(url)?),
            _ => None,
        };
        let mut objects = Objects::new();
        for spec in &self.objects {
            let Some((name, kind)) = spec.split_once('=') else {
                bail!("--object looks like NAME=KIND (e.g. counts=dict), not `{spec}`");
            };
            let made = match &in_cluster {
                Some(m) => kind
                    .parse::<ObjectKind>()
                    .map_err(anyhow::Error::from)
                    .and_then(|k| Ok(k.create_in_cluster(m)?))
                    .and_then(|o| Ok(objects.insert(name, o).map(|_| ())?)),
                None => objects
                    .create(&manager, name, kind)
                    .map(|_| ())
                    .map_err(anyhow::Error::from),
            };
            made.map_err(|e| anyhow::anyhow!("--object `{spec}`: {e}"))?;
        }
        for spec in &self.sends {
            send(&objects, spec)?;
        }
        for spec in &self.closes {
            match objects.end(spec) {
                Some(end) => end
                    .close()
                    .map_err(|e| anyhow::anyhow!("--close `{spec}`: {e}"))?,
                None => bail!(
                    "--close `{spec}`: not an end of a pipe made by --object NAME=pipe (write \
                     NAME.0 or NAME.1)"
                ),
            }
        }
        Ok(objects)
    }
}

/// Sends the value of a `--send PIPE.END=JSON` at that end.
fn send(objects: &Objects, spec: &str) -> Result<()> {
    let Some((target, json)) = spec.split_once('=') else {
        bail!("--send looks like PIPE.END=JSON (e.g. p.0=42), not `{spec}`");
    };
    let Some(end) = objects.end(target) else {
        bail!(
            "--send `{spec}`: `{target}` is not an end of a pipe made by --object \
             NAME=pipe (write NAME.0 or NAME.1)"
        );
    };
    let value: Value = serde_json::from_str(json)
        .map_err(|e| anyhow::anyhow!("--send `{spec}`: the value is not JSON: {e}"))?;
    end.send(&Json(value))
        .map_err(|e| anyhow::anyhow!("--send `{spec}`: {e}"))
}
