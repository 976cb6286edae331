//! The jobs' tables (`jobs`, `job_executions`: migration 12 of `grove_store`) and their queries,
//! run by the store's owner thread.
//!
//! A job row holds the operator's spec as JSON (document, targets, rollout, abort, timeout) beside
//! its status; an execution row holds every field of [`Execution`], its status spelled as AWS
//! does, or `WAITING` while the rollout holds it. Rows are written whole (upserts): the service
//! writes the rows a batch changed, in that batch's transaction.

use std::future::Future;

use rusqlite::{params, Connection, Row};

use grove_store::{Store, StoreError};

use crate::machine::{Execution, Job, JobSpec, JobStatus, Status};

/// How an execution held by the rollout is stored (not one of AWS's statuses).
pub const WAITING: &str = "WAITING";

/// The jobs' queries.
pub trait JobQueries {
    /// Every job and execution, for [`crate::machine::Jobs::restore`].
    fn jobs_load(
        &self,
    ) -> impl Future<Output = Result<(Vec<Job>, Vec<Execution>), StoreError>> + Send;

    /// Durably writes jobs and executions, all or none. Returns after the commit.
    fn jobs_write(
        &self,
        jobs: Vec<Job>,
        executions: Vec<Execution>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl JobQueries for Store {
    async fn jobs_load(&self) -> Result<(Vec<Job>, Vec<Execution>), StoreError> {
        self.transact(|c| Ok((load_jobs(c)?, load_executions(c)?)))
            .await
    }

    async fn jobs_write(
        &self,
        jobs: Vec<Job>,
        executions: Vec<Execution>,
    ) -> Result<(), StoreError> {
        self.transact(move |c| {
            jobs.iter().try_for_each(|j| write_job(c, j))?;
            executions.iter().try_for_each(|e| write_execution(c, e))
        })
        .await
    }
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn write_job(c: &Connection, j: &Job) -> rusqlite::Result<()> {
    let spec = serde_json::to_string(&j.spec).expect("a spec serializes");
    c.prepare_cached(
        "INSERT INTO jobs (id, seq, spec, status, reason, created_ms, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (id) DO UPDATE SET status = excluded.status, reason = excluded.reason,
           updated_ms = excluded.updated_ms",
    )?
    .execute(params![
        j.spec.id,
        ms(j.seq),
        spec,
        j.status.as_str(),
        j.reason,
        ms(j.created_at),
        ms(j.updated_at)
    ])
    .map(drop)
}

fn write_execution(c: &Connection, e: &Execution) -> rusqlite::Result<()> {
    let details = serde_json::to_string(&e.details).expect("details serialize");
    c.prepare_cached(
        "INSERT INTO job_executions (thing, job, seq, status, details, version, queued_ms,
           started_ms, updated_ms, step_deadline_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (thing, job) DO UPDATE SET status = excluded.status,
           details = excluded.details, version = excluded.version,
           queued_ms = excluded.queued_ms, started_ms = excluded.started_ms,
           updated_ms = excluded.updated_ms, step_deadline_ms = excluded.step_deadline_ms",
    )?
    .execute(params![
        e.thing,
        e.job,
        ms(e.seq),
        e.status.map_or(WAITING, Status::as_str),
        details,
        ms(e.version),
        e.queued_at.map(ms),
        e.started_at.map(ms),
        ms(e.updated_at),
        e.step_deadline.map(ms)
    ])
    .map(drop)
}

/// A column that does not hold what this version of Grove writes.
fn corrupt(column: usize, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, what.into())
}

fn unsigned(r: &Row<'_>, i: usize) -> rusqlite::Result<u64> {
    Ok(r.get::<_, i64>(i)?.max(0) as u64)
}

fn optional(r: &Row<'_>, i: usize) -> rusqlite::Result<Option<u64>> {
    Ok(r.get::<_, Option<i64>>(i)?.map(|v| v.max(0) as u64))
}

fn load_jobs(c: &Connection) -> rusqlite::Result<Vec<Job>> {
    let mut stmt = c.prepare(
        "SELECT id, seq, spec, status, reason, created_ms, updated_ms FROM jobs ORDER BY seq",
    )?;
    let rows = stmt.query_map([], |r| {
        let spec: String = r.get(2)?;
        let spec: JobSpec =
            serde_json::from_str(&spec).map_err(|e| corrupt(2, format!("job spec: {e}")))?;
        let status: String = r.get(3)?;
        Ok(Job {
            spec,
            seq: unsigned(r, 1)?,
            status: JobStatus::parse(&status)
                .ok_or_else(|| corrupt(3, format!("job status {status:?}")))?,
            reason: r.get(4)?,
            created_at: unsigned(r, 5)?,
            updated_at: unsigned(r, 6)?,
        })
    })?;
    rows.collect()
}

fn load_executions(c: &Connection) -> rusqlite::Result<Vec<Execution>> {
    let mut stmt = c.prepare(
        "SELECT thing, job, seq, status, details, version, queued_ms, started_ms, updated_ms,
           step_deadline_ms FROM job_executions ORDER BY seq",
    )?;
    let rows = stmt.query_map([], |r| {
        let status: String = r.get(3)?;
        let status = match status.as_str() {
            WAITING => None,
            s => Some(Status::parse(s).ok_or_else(|| corrupt(3, format!("status {s:?}")))?),
        };
        let details: String = r.get(4)?;
        Ok(Execution {
            thing: r.get(0)?,
            job: r.get(1)?,
            seq: unsigned(r, 2)?,
            status,
            details: serde_json::from_str(&details)
                .map_err(|e| corrupt(4, format!("status details: {e}")))?,
            version: unsigned(r, 5)?,
            queued_at: optional(r, 6)?,
            started_at: optional(r, 7)?,
            updated_at: unsigned(r, 8)?,
            step_deadline: optional(r, 9)?,
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{Abort, Jobs, Limits, StartNext, Targets};

    /// What the core wrote comes back as it was, across a reopening of the store.
    #[tokio::test]
    async fn jobs_and_executions_survive_a_reopened_store() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = Store::open(dir.path()).unwrap();
        let mut core = Jobs::restore(Limits::default(), Vec::new(), Vec::new());
        let spec = JobSpec {
            id: "fw".into(),
            document: serde_json::json!({"url": "file:///fw.bin"}),
            targets: Targets::Things(vec!["a".into(), "b".into()]),
            rollout_per_minute: Some(1),
            abort: Some(Abort {
                threshold_percent: 12.5,
                min_executed: 3,
            }),
            timeout_minutes: Some(30),
        };
        core.create(spec, &[], 1_000).unwrap();
        let details = [("step".to_owned(), "2/3".to_owned())].into();
        let started = StartNext {
            details: Some(details),
            step_timeout_minutes: Some(4),
        };
        core.start_next("a", started, 2_000).unwrap();
        let effects = core.take_effects(2_000);
        store
            .jobs_write(effects.jobs.clone(), effects.executions.clone())
            .await
            .unwrap();
        thread.close().await;
        let (store, thread) = Store::open(dir.path()).unwrap();
        let (jobs, mut executions) = store.jobs_load().await.unwrap();
        let mut want = effects.executions;
        want.sort_by_key(|e| e.seq);
        executions.sort_by_key(|e| e.seq);
        assert_eq!(jobs, effects.jobs);
        assert_eq!(executions, want);
        assert_eq!(executions[1].status, None, "b waits for the rollout");
        thread.close().await;
    }
}
