//! Reload without restart: SIGHUP and `POST /admin/reload` re-read the config file the server
//! was started from. An invalid file is refused with every problem named and the running
//! configuration kept. A valid one goes to the controller (`control/reload.rs`), which
//! reconciles its routes with the store as at start and swaps the snapshot in whole.
//!
//! What a reload changes: routes (added, removed, release definitions, settings), upstreams
//! (`base_url`, `api_key_env`, `api`, added and removed ones) and the default upstream. What
//! needs a restart, kept at its running value and named in the answer: `[server]` (listeners,
//! caps, timeouts, workers), `[admin]`, `[store]`, `[log]` and an upstream's `ca_file` (the TLS
//! roots are built once, per worker).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, LoadError};
use crate::control::{Command, Reconfigure, ReloadError, ReloadOutcome, ReloadRequest};
use crate::state::Upstream;

/// Where a running server re-reads its configuration from.
#[derive(Debug, Clone)]
pub struct ReloadFrom {
    /// The config file the server was started from.
    pub path: PathBuf,
    /// Whether SIGHUP triggers a reload (the command line's `serve`; not in-process tests).
    pub on_sighup: bool,
}

/// Reload requests waiting for the reloader; a reload takes milliseconds, so few wait.
pub(super) const RELOAD_QUEUE: usize = 4;

/// SIGHUP, listened for from the server's start (before that, it would end the process).
#[cfg(unix)]
pub(super) type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
pub(super) type Hangups = Option<()>;

/// Starts listening for SIGHUP when `from` asks for it.
pub(super) fn hangups(from: Option<&ReloadFrom>) -> Hangups {
    if from.is_some_and(|f| f.on_sighup) {
        hangup_signal()
    } else {
        None
    }
}

/// The one task that re-reads the file: reloads are applied one at a time, in order.
pub(super) struct Reloader<'a, S> {
    pub from: ReloadFrom,
    /// SIGHUP, when the server reloads on it.
    pub hangups: Hangups,
    /// The configuration in effect (restart-only settings as at start).
    pub running: Config,
    /// The upstreams in effect, by name: an unchanged upstream keeps its `Arc`.
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub secret: &'a S,
    /// Commands for the controller, which applies the routes.
    pub control: mpsc::Sender<Command>,
}

impl<S: Fn(&str) -> Option<String>> Reloader<'_, S> {
    /// Serves reload requests (and SIGHUP, when asked) until `stop`.
    pub(super) async fn serve(
        mut self,
        mut requests: mpsc::Receiver<ReloadRequest>,
        stop: &CancellationToken,
    ) {
        let mut hangups = self.hangups.take();
        loop {
            let reply = tokio::select! {
                () = stop.cancelled() => return,
                r = requests.recv() => match r {
                    Some(reply) => Some(reply),
                    None => return,
                },
                () = next_hangup(&mut hangups) => {
                    tracing::info!(path = %self.from.path.display(), "SIGHUP: reloading the configuration");
                    None
                }
            };
            let outcome = self.reload().await;
            log(&outcome);
            if let Some(reply) = reply {
                let _ = reply.send(outcome);
            }
        }
    }

    async fn reload(&mut self) -> ReloadOutcome {
        let path = self.from.path.clone();
        let next = match tokio::task::spawn_blocking(move || Config::load(&path)).await {
            Ok(Ok(next)) => next,
            Ok(Err(LoadError::Invalid { problems, .. })) => {
                return ReloadOutcome::Refused(problems.iter().map(ToString::to_string).collect())
            }
            Ok(Err(e @ LoadError::Read { .. })) => {
                return ReloadOutcome::Refused(vec![e.to_string()])
            }
            Err(e) => return ReloadOutcome::Failed(format!("reading the configuration: {e}")),
        };
        let upstreams = match self.resolve(&next) {
            Ok(u) => u,
            Err(problems) => return ReloadOutcome::Refused(problems),
        };
        let Some(default_upstream) = upstreams.get(&next.default_upstream).cloned() else {
            return ReloadOutcome::Refused(vec![format!(
                "unknown default upstream {:?}",
                next.default_upstream
            )]);
        };
        let restart_required = restart_required(&self.running, &next);
        let (reply, answer) = oneshot::channel();
        let command = Command::Reload {
            next: Box::new(Reconfigure {
                routes: next.routes.clone(),
                upstreams: upstreams.clone(),
                default_upstream,
            }),
            reply,
        };
        if self.control.send(command).await.is_err() {
            return ReloadOutcome::Failed("the controller has stopped".into());
        }
        match answer.await {
            Ok(Ok(reloaded)) => {
                self.adopt(next, upstreams);
                ReloadOutcome::Applied {
                    reloaded,
                    restart_required,
                }
            }
            Ok(Err(ReloadError::Invalid(problems))) => ReloadOutcome::Refused(problems),
            Ok(Err(e)) => ReloadOutcome::Failed(e.to_string()),
            Err(_) => ReloadOutcome::Failed("the controller has stopped".into()),
        }
    }

    /// The new file's upstreams: the running `Arc` for an unchanged one, else resolved now
    /// (its key read from the environment). Every problem, or the map.
    fn resolve(&self, next: &Config) -> Result<HashMap<String, Arc<Upstream>>, Vec<String>> {
        let mut problems = Vec::new();
        let mut out = HashMap::new();
        for (name, cfg) in &next.upstreams {
            let same = self.running.upstreams.get(name) == Some(cfg);
            match self.upstreams.get(name) {
                Some(u) if same => {
                    out.insert(name.clone(), Arc::clone(u));
                }
                _ => match Upstream::from_config(cfg, self.secret) {
                    Ok(u) => {
                        out.insert(name.clone(), Arc::new(u));
                    }
                    Err(e) => problems.push(format!("upstreams.{name}: {e}")),
                },
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }

    /// Takes `next` as the running configuration, but for the settings that need a restart.
    fn adopt(&mut self, mut next: Config, upstreams: HashMap<String, Arc<Upstream>>) {
        next.server = self.running.server.clone();
        next.admin = self.running.admin.clone();
        next.store = self.running.store.clone();
        next.log = self.running.log;
        for (name, cfg) in &mut next.upstreams {
            cfg.ca_file = self
                .running
                .upstreams
                .get(name)
                .and_then(|u| u.ca_file.clone());
        }
        self.running = next;
        self.upstreams = upstreams;
    }
}

/// The settings that differ between `running` and `next` but only take effect at a restart.
pub(super) fn restart_required(running: &Config, next: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let sections = [
        ("[server]", running.server != next.server),
        ("[admin]", running.admin != next.admin),
        ("[store]", running.store != next.store),
        ("[log]", running.log != next.log),
    ];
    for (name, changed) in sections {
        if changed {
            out.push(name.to_string());
        }
    }
    for (name, cfg) in &next.upstreams {
        let before = running.upstreams.get(name).and_then(|u| u.ca_file.as_ref());
        if before != cfg.ca_file.as_ref() {
            out.push(format!("upstreams.{name}.ca_file"));
        }
    }
    out
}

fn log(outcome: &ReloadOutcome) {
    match outcome {
        ReloadOutcome::Applied {
            reloaded,
            restart_required,
        } => {
            tracing::info!(
                added = ?reloaded.added,
                removed = ?reloaded.removed,
                updated = ?reloaded.updated,
                changes = ?reloaded.changes,
                "configuration reloaded"
            );
            if !restart_required.is_empty() {
                tracing::warn!(
                    settings = ?restart_required,
                    "changed settings that only take effect at the next restart; their running values are kept"
                );
            }
        }
        ReloadOutcome::Refused(problems) => {
            tracing::warn!(
                ?problems,
                "configuration reload refused; the running configuration is kept"
            );
        }
        ReloadOutcome::Failed(e) => tracing::error!(error = %e, "configuration reload failed"),
    }
}

#[cfg(unix)]
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with POST /admin/reload");
            None
        }
    }
}

#[cfg(unix)]
async fn next_hangup(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            if s.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

#[cfg(not(unix))]
fn hangup_signal() -> Option<()> {
    None
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Option<()>) {
    std::future::pending::<()>().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra_server: &str, log: &str) -> Config {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{extra_server}\n[upstreams.a]\nbase_url = \"http://a\"\n{log}"
        );
        Config::parse(&text, std::path::Path::new("/")).unwrap()
    }

    #[test]
    fn names_the_settings_that_need_a_restart() {
        let running = config("", "");
        assert!(restart_required(&running, &config("", "")).is_empty());
        assert_eq!(
            restart_required(&running, &config("max_body_bytes = 5\n", "")),
            ["[server]"]
        );
        assert_eq!(
            restart_required(
                &running,
                &config("workers = 1\n", "[log]\nformat = \"json\"\n")
            ),
            ["[server]", "[log]"]
        );
    }
}
