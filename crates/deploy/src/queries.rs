//! The `deployments` table (migrations 8 and 10 of `grove_store`) and its queries, run by the
//! store's owner thread.

use std::future::Future;

use rusqlite::{params, Connection, OptionalExtension, Row};

use grove_store::{Store, StoreError};

use crate::machine::{Phase, Status};

/// Finished deployments kept in the history (the newest committed one is always kept: its rules
/// are the gateway's).
pub const HISTORY: usize = 50;

/// A stored deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentRow {
    /// Its id.
    pub id: String,
    /// The document as received.
    pub document: String,
    /// Its step.
    pub phase: Phase,
    /// Attempts (see [`Status::attempt`]).
    pub attempt: u32,
    /// Why it failed or rolled back.
    pub reason: Option<String>,
    /// What its switch replaced (JSON), once staging began.
    pub snapshot: Option<String>,
    /// When it was received (Unix ms).
    pub received_ms: i64,
    /// When its step last changed (Unix ms).
    pub updated_ms: i64,
    /// The AWS IoT job it came from (`None`: `grove deploy`).
    pub job: Option<String>,
}

impl DeploymentRow {
    /// Its status, as the machine sees it.
    pub fn status(&self) -> Status {
        Status {
            id: self.id.clone(),
            phase: self.phase,
            attempt: self.attempt,
            reason: self.reason.clone(),
        }
    }
}

/// The deployments' queries.
pub trait DeployQueries {
    /// Durably records a new deployment (from `job`, if one) as received; false if its id is
    /// already in the history. Prunes finished deployments beyond [`HISTORY`].
    fn deployment_insert(
        &self,
        id: String,
        document: String,
        job: Option<String>,
        now_ms: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Durably records a deployment's step.
    fn deployment_record(
        &self,
        status: Status,
        now_ms: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Durably records what a deployment's switch replaces.
    fn deployment_snapshot(
        &self,
        id: String,
        snapshot: String,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// One deployment.
    fn deployment(
        &self,
        id: String,
    ) -> impl Future<Output = Result<Option<DeploymentRow>, StoreError>> + Send;

    /// The deployments not finished, oldest first.
    fn deployments_unfinished(
        &self,
    ) -> impl Future<Output = Result<Vec<DeploymentRow>, StoreError>> + Send;

    /// The newest deployments, newest first.
    fn deployments_history(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeploymentRow>, StoreError>> + Send;

    /// The newest committed deployment other than `except`; with `with_rules`, the newest such
    /// one whose document has `rules`.
    fn deployment_last_committed(
        &self,
        with_rules: bool,
        except: Option<String>,
    ) -> impl Future<Output = Result<Option<DeploymentRow>, StoreError>> + Send;
}

const COLUMNS: &str =
    "id, document, phase, attempt, reason, snapshot, received_ms, updated_ms, job FROM deployments";

fn row(r: &Row<'_>) -> rusqlite::Result<DeploymentRow> {
    let phase: String = r.get(2)?;
    Ok(DeploymentRow {
        id: r.get(0)?,
        document: r.get(1)?,
        // Only this crate writes the column, from `Phase::as_str`; an unknown name is a row from
        // a newer Grove (refused by the store's migration check before this), read as failed.
        phase: Phase::parse(&phase).unwrap_or(Phase::Failed),
        attempt: r.get(3)?,
        reason: r.get(4)?,
        snapshot: r.get(5)?,
        received_ms: r.get(6)?,
        updated_ms: r.get(7)?,
        job: r.get(8)?,
    })
}

fn rows(
    c: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
) -> rusqlite::Result<Vec<DeploymentRow>> {
    let mut stmt = c.prepare_cached(sql)?;
    let rows = stmt.query_map(args, row)?;
    rows.collect()
}

const FINAL: &str = "('committed', 'rolled_back', 'failed', 'superseded')";

impl DeployQueries for Store {
    async fn deployment_insert(
        &self,
        id: String,
        document: String,
        job: Option<String>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.transact(move |c| {
            let inserted = c
                .prepare_cached(
                    "INSERT INTO deployments (id, document, phase, attempt, received_ms, updated_ms, job)
                     VALUES (?1, ?2, 'received', 1, ?3, ?3, ?4) ON CONFLICT (id) DO NOTHING",
                )?
                .execute(params![id, document, now_ms, job])?;
            c.prepare_cached(&format!(
                "DELETE FROM deployments WHERE phase IN {FINAL}
                   AND seq NOT IN (SELECT seq FROM deployments ORDER BY seq DESC LIMIT ?1)
                   AND seq IS NOT (SELECT max(seq) FROM deployments WHERE phase = 'committed')
                   AND seq IS NOT (SELECT max(seq) FROM deployments WHERE phase = 'committed'
                                     AND json_extract(document, '$.rules') IS NOT NULL)"
            ))?
            .execute(params![HISTORY as i64])?;
            Ok(inserted == 1)
        })
        .await
    }

    async fn deployment_record(&self, status: Status, now_ms: i64) -> Result<(), StoreError> {
        self.transact(move |c| {
            c.prepare_cached(
                "UPDATE deployments SET phase = ?2, attempt = ?3, reason = ?4, updated_ms = ?5
                 WHERE id = ?1",
            )?
            .execute(params![
                status.id,
                status.phase.as_str(),
                status.attempt,
                status.reason,
                now_ms
            ])
            .map(drop)
        })
        .await
    }

    async fn deployment_snapshot(&self, id: String, snapshot: String) -> Result<(), StoreError> {
        self.transact(move |c| {
            c.prepare_cached("UPDATE deployments SET snapshot = ?2 WHERE id = ?1")?
                .execute(params![id, snapshot])
                .map(drop)
        })
        .await
    }

    async fn deployment(&self, id: String) -> Result<Option<DeploymentRow>, StoreError> {
        self.transact(move |c| {
            c.prepare_cached(&format!("SELECT {COLUMNS} WHERE id = ?1"))?
                .query_row(params![id], row)
                .optional()
        })
        .await
    }

    async fn deployments_unfinished(&self) -> Result<Vec<DeploymentRow>, StoreError> {
        self.transact(|c| {
            rows(
                c,
                &format!("SELECT {COLUMNS} WHERE phase NOT IN {FINAL} ORDER BY seq"),
                [],
            )
        })
        .await
    }

    async fn deployments_history(&self, limit: usize) -> Result<Vec<DeploymentRow>, StoreError> {
        self.transact(move |c| {
            rows(
                c,
                &format!("SELECT {COLUMNS} ORDER BY seq DESC LIMIT ?1"),
                params![limit as i64],
            )
        })
        .await
    }

    async fn deployment_last_committed(
        &self,
        with_rules: bool,
        except: Option<String>,
    ) -> Result<Option<DeploymentRow>, StoreError> {
        self.transact(move |c| {
            let filter = if with_rules {
                "AND json_extract(document, '$.rules') IS NOT NULL"
            } else {
                ""
            };
            Ok(rows(
                c,
                &format!(
                    "SELECT {COLUMNS} WHERE phase = 'committed' AND id IS NOT ?1 {filter}
                     ORDER BY seq DESC LIMIT 1"
                ),
                params![except],
            )?
            .pop())
        })
        .await
    }
}
