//! The store's background session: one connection of its own that `LISTEN`s for new state
//! versions (and polls the version as well, in case a notification is lost with a connection),
//! holds the judge's session-level advisory lock when it can get it, and writes this replica's
//! heartbeat. When the connection fails the lock goes with it (PostgreSQL releases a session's
//! locks when the session ends, a killed process's included), and the session reconnects.

use std::time::Duration;

use tokio::time::{interval, sleep, Instant, MissedTickBehavior};
use tokio_postgres::{AsyncMessage, Client};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::CancellationToken;

use super::{Replica, CHANNEL, NOW_MS};
use crate::control::store::FleetSignal;

/// The session-level advisory lock the judge's leader holds ("usjudg").
const LEADER_LOCK: i64 = 0x7573_6a75_6467;
/// The judge's lock as `pg_locks` shows it: (classid, objid), the key's high and low 32 bits.
pub fn leader_lock_ids() -> (i64, i64) {
    (LEADER_LOCK >> 32, LEADER_LOCK & 0xffff_ffff)
}

/// How often the version is polled and the lock tried, notifications or not.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// How often the heartbeat row is written.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Wait before connecting again after a failure.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);

pub struct Session {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    pub replica: Replica,
    pub stop: CancellationToken,
}

impl Session {
    /// Runs until `stop`: `report` gets every change of what the session knows; `serving` says
    /// which state version the controller serves.
    pub async fn run(self, report: impl Fn(FleetSignal), serving: impl Fn() -> i64) {
        let mut last = FleetSignal::default();
        while !self.stop.is_cancelled() {
            match self.config.connect(self.tls.clone()).await {
                Ok((client, mut connection)) => {
                    let notified = tokio::sync::Notify::new();
                    let driver = async {
                        loop {
                            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                                Some(Ok(AsyncMessage::Notification(_))) => notified.notify_one(),
                                Some(Ok(_)) => {}
                                Some(Err(e)) => return e.to_string(),
                                None => return "connection closed".to_string(),
                            }
                        }
                    };
                    let work = self.serve(&client, &notified, &mut last, &report, &serving);
                    let why = tokio::select! {
                        why = driver => why,
                        r = work => match r {
                            Ok(()) => return,
                            Err(e) => e.to_string(),
                        },
                    };
                    tracing::debug!(error = %why, "store session lost; reconnecting");
                }
                Err(e) => tracing::debug!(error = %e, "store session cannot connect"),
            }
            last.leader = false;
            last.connected = false;
            report(last);
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = sleep(RECONNECT_AFTER) => {}
            }
        }
    }

    /// Listens, polls, leads when it can and beats, until an error or `stop` (then it gives the
    /// lock back and removes its heartbeat).
    async fn serve(
        &self,
        client: &Client,
        notified: &tokio::sync::Notify,
        last: &mut FleetSignal,
        report: &impl Fn(FleetSignal),
        serving: &impl Fn() -> i64,
    ) -> Result<(), tokio_postgres::Error> {
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        tracing::debug!("store session: listening for new state versions");
        let started: i64 = client
            .query_one(&format!("SELECT {NOW_MS}"), &[])
            .await?
            .get(0);
        let mut poll = interval(POLL_EVERY);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut beat_at = Instant::now();
        let mut leader = false;
        loop {
            tokio::select! {
                () = self.stop.cancelled() => {
                    if leader {
                        client.execute("SELECT pg_advisory_unlock($1)", &[&LEADER_LOCK]).await?;
                    }
                    client.execute("DELETE FROM replicas WHERE id = $1", &[&self.replica.id]).await?;
                    return Ok(());
                }
                () = notified.notified() => {}
                _ = poll.tick() => {}
            }
            let version: i64 = client
                .query_one("SELECT version FROM fleet_state", &[])
                .await?
                .get(0);
            if !leader {
                leader = client
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
                    .await?
                    .get(0);
            }
            let now = FleetSignal {
                db_version: version,
                leader,
                connected: true,
            };
            if now != *last {
                *last = now;
                report(now);
            }
            if Instant::now() >= beat_at {
                beat_at = Instant::now() + HEARTBEAT_EVERY;
                client
                    .execute(
                        &format!(
                            "INSERT INTO replicas (id, address, started_at_ms, last_seen_ms, \
                             state_version, leader, backend_pid) \
                             VALUES ($1, $2, $3, {NOW_MS}, $4, $5, pg_backend_pid()) \
                             ON CONFLICT (id) DO UPDATE SET address = $2, started_at_ms = $3, \
                             last_seen_ms = {NOW_MS}, state_version = $4, leader = $5, \
                             backend_pid = pg_backend_pid()"
                        ),
                        &[
                            &self.replica.id,
                            &self.replica.address,
                            &started,
                            &serving(),
                            &leader,
                        ],
                    )
                    .await?;
            }
        }
    }
}
