//! Hot reload: SIGHUP, `POST /admin/reload`, or the config file changing on disk.
//!
//! The file is read and fully validated first; a bad config is refused with its errors (in the
//! log, the admin response and `gateway_config_reloads_total{outcome="error"}`) and the
//! running one stays. A good one becomes a new generation built next to the running one,
//! carrying over the state of what did not change (`Runtime::build`); new listeners are bound
//! before anything is swapped, so a port that cannot be taken refuses the whole reload. Then
//! one atomic swap: requests that started keep their generation to the end, new ones get the
//! new one; connections (HTTP/1 keep-alive, HTTP/2, upgraded tunnels) stay open across it.
//! Removed listeners stop accepting; their open connections finish.
//!
//! Not applied by a reload (logged, and listed in the diff as needing a restart):
//! `server.node_id`, `server.worker_threads`, `admin.listen`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;

use super::diff;
use super::Shared;
use crate::config::{self, Mode};
use crate::runtime::Runtime;

/// A listener's accept loop, as the reloader sees it.
pub struct ListenerHandle {
    /// The configured address (port 0 stays 0: tests bind ephemeral ports).
    pub configured: SocketAddr,
    pub stop: watch::Sender<bool>,
    /// A duplicate of the listening socket (for a binary upgrade's hand-over); dropped with
    /// the handle, so a removed listener's port is closed.
    pub socket: std::net::TcpListener,
}

/// How a reload ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new generation serves.
    Success,
    /// Refused: the running config stays.
    Error,
    /// Checked and compared only (`?dry_run=true`).
    DryRun,
    /// The file was touched, not changed.
    Unchanged,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Error => "error",
            Self::DryRun => "dry_run",
            Self::Unchanged => "unchanged",
        }
    }
}

/// What a reload did, for the admin response and the log.
#[derive(Debug)]
pub struct Report {
    pub outcome: Outcome,
    pub generation: u64,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub diff: Option<diff::ConfigDiff>,
}

impl Report {
    pub fn to_json(&self) -> Value {
        json!({
            "outcome": self.outcome.as_str(),
            "generation": self.generation,
            "errors": self.errors,
            "warnings": self.warnings,
            "diff": self.diff.as_ref().map(|d| d.to_json()),
        })
    }

    fn error(generation: u64, errors: Vec<String>) -> Self {
        Self {
            outcome: Outcome::Error,
            generation,
            errors,
            warnings: Vec::new(),
            diff: None,
        }
    }
}

/// Why a reload was asked for (for the log).
#[derive(Clone, Copy, Debug)]
pub enum Trigger {
    Signal,
    Admin,
    FileChanged,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::Admin => "POST /admin/reload",
            Trigger::FileChanged => "file changed",
        }
    }
}

/// Reload the config file of the running generation (or only report what would change).
pub async fn reload(shared: &Arc<Shared>, trigger: Trigger, dry_run: bool) -> Report {
    reload_from(shared, trigger, dry_run, None).await
}

/// Like `reload`; with `candidate`, that text is checked (dry run only) instead of the file:
/// operators can ask what a config would change before putting it in place.
pub async fn reload_from(
    shared: &Arc<Shared>,
    trigger: Trigger,
    dry_run: bool,
    candidate: Option<String>,
) -> Report {
    let _one_at_a_time = shared.reload_lock.lock().await;
    let current = shared.runtime.load_full();
    if candidate.is_some() && !dry_run {
        return Report::error(
            current.generation,
            vec![
                "a config in the request body is for dry_run=true only; a reload reads the file"
                    .into(),
            ],
        );
    }
    let path = current.config.path.clone();
    let loaded = {
        let p = path.clone();
        let work = move || match candidate {
            Some(text) => config::load_str(&p, &text, Mode::Run),
            None => config::load(&p, Mode::Run),
        };
        match tokio::task::spawn_blocking(work).await {
            Ok(r) => r,
            Err(e) => Err(vec![format!("reload task failed: {e}")]),
        }
    };
    let loaded = match loaded {
        Ok(l) => l,
        Err(errors) if dry_run => return Report::error(current.generation, errors),
        Err(errors) => return refuse(shared, &current, trigger, errors),
    };
    let d = diff::diff(&current.config, &loaded.config);
    if dry_run {
        return Report {
            outcome: Outcome::DryRun,
            generation: current.generation,
            errors: Vec::new(),
            warnings: loaded.warnings,
            diff: Some(d),
        };
    }
    if d.is_empty() && matches!(trigger, Trigger::FileChanged) {
        // Touched, not changed (an editor saving twice): nothing to do.
        return Report {
            outcome: Outcome::Unchanged,
            generation: current.generation,
            errors: Vec::new(),
            warnings: loaded.warnings,
            diff: Some(d),
        };
    }
    let generation = current.generation + 1;
    let config = Arc::new(loaded.config);
    // New listeners are bound before anything changes: a taken port refuses the reload.
    let (added, moved) = match bind_new(shared, &config) {
        Ok(x) => x,
        Err(e) => return refuse(shared, &current, trigger, vec![e]),
    };
    // New `host:port` names must resolve (else the reload is refused); new discovering
    // upstreams get their first lookup.
    if let Err(errors) = crate::discovery::prepare(&config, &shared.metrics).await {
        return refuse(shared, &current, trigger, errors);
    }
    let found = crate::discovery::found();
    let runtime = match Runtime::build(
        config.clone(),
        &shared.metrics,
        &shared.ids,
        generation,
        Some(&current),
        &found,
        false,
    ) {
        Ok(r) => r,
        Err(e) => return refuse(shared, &current, trigger, vec![e]),
    };
    let runtime = Arc::new(runtime);
    shared.runtime.store(runtime.clone());
    shared.metrics.prune(&config, &runtime.target_ids());
    super::discover::reconcile(shared);
    start_listeners(shared, &config, added, moved);
    shared
        .metrics
        .config_reloads_total
        .with_label_values(&["success"])
        .inc();
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    for r in &d.needs_restart {
        tracing::warn!(setting = %r, "changed in the file, but only a restart applies it");
    }
    tracing::info!(
        ?trigger,
        generation,
        summary = %config.summary(),
        changes = d.changes.len(),
        "config reloaded"
    );
    for (u, m) in &d.key_moves {
        tracing::info!(upstream = %u, "{}", m.summary());
    }
    crate::events::push(
        crate::events::Kind::Reload,
        "info",
        config.path.display().to_string(),
        format!(
            "generation {generation} ({}): {}",
            trigger.as_str(),
            change_summary(&d)
        ),
    );
    Report {
        outcome: Outcome::Success,
        generation,
        errors: Vec::new(),
        warnings: loaded.warnings,
        diff: Some(d),
    }
}

/// A refused reload: counted, logged, an event; the running config stays.
fn refuse(shared: &Shared, current: &Runtime, trigger: Trigger, errors: Vec<String>) -> Report {
    shared
        .metrics
        .config_reloads_total
        .with_label_values(&["error"])
        .inc();
    for e in &errors {
        tracing::error!(error = %e, ?trigger, "config reload refused; the running config stays");
    }
    refused_event(current, trigger, &errors);
    Report::error(current.generation, errors)
}

type Bound = Vec<(String, SocketAddr, std::net::TcpListener)>;

/// Bind the listeners `config` adds (new names, or new addresses): (added, moved).
fn bind_new(shared: &Shared, config: &config::Config) -> Result<(Bound, Bound), String> {
    let handles = shared
        .listeners
        .lock()
        .map_err(|_| "listener table poisoned".to_string())?;
    let mut added = Vec::new();
    let mut moved = Vec::new();
    for l in &config.listeners {
        match handles.get(&l.name) {
            Some(h) if h.configured == l.listen => {}
            existing => {
                let socket = super::bind_one(l.listen).map_err(|e| {
                    format!("listener {:?}: cannot listen on {}: {e}", l.name, l.listen)
                })?;
                let entry = (l.name.clone(), l.listen, socket);
                if existing.is_some() {
                    moved.push(entry);
                } else {
                    added.push(entry);
                }
            }
        }
    }
    Ok((added, moved))
}

/// After the swap: start the new accept loops, stop the removed and moved ones.
fn start_listeners(shared: &Arc<Shared>, config: &config::Config, added: Bound, moved: Bound) {
    let Ok(mut handles) = shared.listeners.lock() else {
        return;
    };
    let keep: HashMap<&str, ()> = config
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), ()))
        .collect();
    handles.retain(|name, h| {
        let stays = keep.contains_key(name.as_str());
        if !stays {
            h.stop.send_replace(true);
            tracing::info!(listener = %name, "listener removed by reload: no new connections");
        }
        stays
    });
    for (name, configured, socket) in moved.into_iter().chain(added) {
        if let Some(old) = handles.remove(&name) {
            old.stop.send_replace(true);
        }
        if let Ok(addr) = socket.local_addr() {
            tracing::info!(listener = %name, %addr, "listener bound");
        }
        match super::spawn_accept(socket, name.clone(), configured, shared.clone()) {
            Ok(handle) => {
                handles.insert(name, handle);
            }
            Err(e) => tracing::error!(listener = %name, error = %e, "cannot use the new listener"),
        }
    }
}

/// Reload on SIGHUP, for as long as the process runs.
pub fn spawn_signal_reloads(shared: &Arc<Shared>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!(signal = "SIGHUP", "reloading the config");
                reload(&shared, Trigger::Signal, false).await;
            }
        });
    }
}

/// Reload when the config file changes on disk, once it reads the same twice 300 ms apart. The directory is
/// watched, not the file, so editors that replace the file and Kubernetes ConfigMap volumes
/// (which swap a symlinked directory) are seen too; a change that leaves the config as it
/// was does nothing.
pub fn spawn_file_watch(shared: &Arc<Shared>, path: &Path) {
    use notify::{RecursiveMode, Watcher};
    // Not canonicalized: a ConfigMap's file is a symlink into a directory the kubelet
    // replaces; the directory that holds the name is the one to watch.
    let file: PathBuf = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    let Some(dir) = file.parent().map(Path::to_path_buf) else {
        return;
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if !event.kind.is_access() {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; SIGHUP and /admin/reload still reload");
            return;
        }
    };
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the config directory; SIGHUP and /admin/reload still reload");
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let _watcher = watcher;
        while rx.recv().await.is_some() {
            // Debounce: an editor's save is often several events, and a writer that is not
            // done yet leaves a half file. Apply only once the file reads the same twice,
            // 300 ms apart (SPEC §8.2); give up on this change after ~6 s of churn (the next
            // event starts over).
            let mut last = tokio::fs::read(&file).await.ok();
            let mut settled = false;
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                while rx.try_recv().is_ok() {}
                let now = tokio::fs::read(&file).await.ok();
                if now.is_some() && now == last {
                    settled = true;
                    break;
                }
                last = now;
            }
            if !settled {
                tracing::warn!(file = %file.display(), "config file kept changing (or could not be read): not reloaded");
                continue;
            }
            let report = reload(&shared, Trigger::FileChanged, false).await;
            if report.outcome == Outcome::Success {
                tracing::info!(
                    generation = report.generation,
                    "reloaded after the config file changed on disk"
                );
            }
        }
    });
}

/// A refused reload, for the status page's events.
fn refused_event(current: &Runtime, trigger: Trigger, errors: &[String]) {
    crate::events::push(
        crate::events::Kind::ReloadError,
        "bad",
        current.config.path.display().to_string(),
        format!(
            "refused ({}), generation {} stays: {}",
            trigger.as_str(),
            current.generation,
            errors.join("; ")
        ),
    );
}

/// One line per change, for events: "route api added; users: adding users-3 moves 24.8% ...".
fn change_summary(d: &diff::ConfigDiff) -> String {
    let mut parts: Vec<String> = d
        .changes
        .iter()
        .map(|c| format!("{} {} {}", c.kind, c.name, c.what))
        .collect();
    parts.extend(d.key_moves.iter().map(|(_, m)| m.summary()));
    parts.extend(
        d.needs_restart
            .iter()
            .map(|r| format!("{r} changed (needs a restart)")),
    );
    if parts.is_empty() {
        "no change".into()
    } else {
        parts.join("; ")
    }
}
