//! Job ids and the reserved `$aws/things/{thing}/jobs/...` topics (pure).
//!
//! A device written for AWS IoT Jobs must find Grove on exactly the topics it uses against AWS IoT
//! Core. From the AWS IoT Developer Guide, "Jobs device MQTT API operations"
//! (<https://docs.aws.amazon.com/iot/latest/developerguide/jobs-mqtt-api.html>):
//!
//! | request topic | operation | answered on |
//! |---|---|---|
//! | `$aws/things/{thing}/jobs/get` | GetPendingJobExecutions | `…/get/accepted`, `…/get/rejected` |
//! | `$aws/things/{thing}/jobs/start-next` | StartNextPendingJobExecution | `…/start-next/accepted`, `…/rejected` |
//! | `$aws/things/{thing}/jobs/{jobId}/get` | DescribeJobExecution (`$next` allowed) | `…/{jobId}/get/accepted`, `…/rejected` |
//! | `$aws/things/{thing}/jobs/{jobId}/update` | UpdateJobExecution | `…/{jobId}/update/accepted`, `…/rejected` |
//!
//! and the notifications `$aws/things/{thing}/jobs/notify` (JobExecutionsChanged) and
//! `$aws/things/{thing}/jobs/notify-next` (NextJobExecutionChanged).
//!
//! Names are checked as the Jobs data-plane API checks them
//! (<https://docs.aws.amazon.com/iot/latest/apireference/API_iot-jobs-data_DescribeJobExecution.html>):
//! a thing name is 1 to 128 characters of `[a-zA-Z0-9:_-]` (the shadows' rule, shared through
//! `grove-shadow-api`), a job id 1 to 64 of `[a-zA-Z0-9_-]`, or `$next` where a describe allows it.

use grove_shadow_api::names::{validate_thing_name, NameError};

/// Longest job id AWS accepts ("Length Constraints: Minimum length of 1. Maximum length of 64",
/// `API_iot-jobs-data_UpdateJobExecution`).
pub const MAX_JOB_ID_LEN: usize = 64;

/// The job id that names a thing's next pending execution in a describe ("You can set the `jobId`
/// to `$next` to return the next pending job execution for a thing").
pub const NEXT: &str = "$next";

/// Topic filters of every request the service answers and of nothing it publishes itself: its
/// answers are one level deeper than their requests (`…/get/accepted`), and its notifications
/// (`…/jobs/notify`, `…/jobs/notify-next`) end in no request's last level.
pub const REQUEST_FILTERS: [&str; 4] = [
    "$aws/things/+/jobs/get",
    "$aws/things/+/jobs/start-next",
    "$aws/things/+/jobs/+/get",
    "$aws/things/+/jobs/+/update",
];

/// Why a job id is not one AWS would accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobIdError {
    /// Empty.
    #[error("a job id must not be empty")]
    Empty,
    /// Over [`MAX_JOB_ID_LEN`].
    #[error("a job id is at most {MAX_JOB_ID_LEN} characters; this one has {0}")]
    TooLong(usize),
    /// A character outside `[a-zA-Z0-9_-]`.
    #[error("a job id may contain only a-z, A-Z, 0-9, '_' and '-'; found {0:?}")]
    InvalidCharacter(char),
}

/// Checks a job id against AWS's rule: 1 to 64 characters of `[a-zA-Z0-9_-]` (the pattern of
/// `CreateJob`'s `jobId`, without the thing names' `:`).
pub fn validate_job_id(id: &str) -> Result<(), JobIdError> {
    if id.is_empty() {
        return Err(JobIdError::Empty);
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
    {
        return Err(JobIdError::InvalidCharacter(c));
    }
    if id.len() > MAX_JOB_ID_LEN {
        return Err(JobIdError::TooLong(id.len()));
    }
    Ok(())
}

/// Which execution a describe or an update names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobRef {
    /// `$next`: the thing's next pending execution (describe only).
    Next,
    /// A job by id.
    Id(String),
}

/// The four device operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// `jobs/get`: GetPendingJobExecutions.
    GetPending,
    /// `jobs/start-next`: StartNextPendingJobExecution.
    StartNext,
    /// `jobs/{jobId}/get`: DescribeJobExecution.
    Describe(JobRef),
    /// `jobs/{jobId}/update`: UpdateJobExecution (never `$next`).
    Update(String),
}

impl Operation {
    /// The label of this operation in metrics: `get`, `start_next`, `describe`, `update`.
    pub fn label(&self) -> &'static str {
        match self {
            Operation::GetPending => "get",
            Operation::StartNext => "start_next",
            Operation::Describe(_) => "describe",
            Operation::Update(_) => "update",
        }
    }
}

/// Why a topic under the request filters is not a request the service can serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Not one of the request forms at all (never under [`REQUEST_FILTERS`]).
    #[error("not a jobs request topic")]
    NotJobsTopic,
    /// The thing name is not one AWS accepts.
    #[error("invalid thing name: {0}")]
    ThingName(NameError),
    /// The job id is not one AWS accepts (or `$next` on an update).
    #[error("invalid job id: {0}")]
    JobId(String),
}

/// A parsed request topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTopic {
    /// The thing whose executions the request is about.
    pub thing: String,
    /// What it asks.
    pub op: Operation,
    /// The topic itself, the base of its answers' topics.
    pub topic: String,
}

impl RequestTopic {
    /// Parses one of the four request forms, validating names as AWS does.
    pub fn parse(topic: &str) -> Result<RequestTopic, TopicError> {
        let rest = topic
            .strip_prefix("$aws/things/")
            .ok_or(TopicError::NotJobsTopic)?;
        let levels: Vec<&str> = rest.split('/').collect();
        let (thing, op) = match levels.as_slice() {
            [thing, "jobs", "get"] => (*thing, Operation::GetPending),
            [thing, "jobs", "start-next"] => (*thing, Operation::StartNext),
            [thing, "jobs", job, "get"] if *job == NEXT => {
                (*thing, Operation::Describe(JobRef::Next))
            }
            [thing, "jobs", job, "get"] => {
                validate_job_id(job).map_err(|e| TopicError::JobId(e.to_string()))?;
                (*thing, Operation::Describe(JobRef::Id((*job).to_owned())))
            }
            [thing, "jobs", job, "update"] => {
                if *job == NEXT {
                    return Err(TopicError::JobId(
                        "$next names no execution to update; give the job's id".into(),
                    ));
                }
                validate_job_id(job).map_err(|e| TopicError::JobId(e.to_string()))?;
                (*thing, Operation::Update((*job).to_owned()))
            }
            _ => return Err(TopicError::NotJobsTopic),
        };
        validate_thing_name(thing).map_err(TopicError::ThingName)?;
        Ok(RequestTopic {
            thing: thing.to_owned(),
            op,
            topic: topic.to_owned(),
        })
    }

    /// The topic a successful answer goes to: the request topic + `/accepted`.
    pub fn accepted(&self) -> String {
        format!("{}/accepted", self.topic)
    }

    /// The topic an error answer goes to: the request topic + `/rejected`.
    pub fn rejected(&self) -> String {
        format!("{}/rejected", self.topic)
    }
}

/// `$aws/things/{thing}/jobs/notify`: JobExecutionsChanged.
pub fn notify_topic(thing: &str) -> String {
    format!("$aws/things/{thing}/jobs/notify")
}

/// `$aws/things/{thing}/jobs/notify-next`: NextJobExecutionChanged.
pub fn notify_next_topic(thing: &str) -> String {
    format!("$aws/things/{thing}/jobs/notify-next")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One case per line: the topic and what it parses to (`None`: refused, with the error text
    /// fragment).
    #[test]
    fn request_topics_parse_as_aws_names_them() {
        let ok = |t: &str, thing: &str, op: Operation| {
            let r = RequestTopic::parse(t).unwrap_or_else(|e| panic!("{t}: {e}"));
            assert_eq!((r.thing.as_str(), r.op), (thing, op), "{t}");
        };
        ok("$aws/things/t1/jobs/get", "t1", Operation::GetPending);
        ok(
            "$aws/things/a:b_c-d/jobs/start-next",
            "a:b_c-d",
            Operation::StartNext,
        );
        ok(
            "$aws/things/t/jobs/$next/get",
            "t",
            Operation::Describe(JobRef::Next),
        );
        ok(
            "$aws/things/t/jobs/fw-2_1/get",
            "t",
            Operation::Describe(JobRef::Id("fw-2_1".into())),
        );
        ok(
            "$aws/things/t/jobs/fw/update",
            "t",
            Operation::Update("fw".into()),
        );
        let bad = |t: &str, want: &str| {
            let e = RequestTopic::parse(t).expect_err(t).to_string();
            assert!(e.contains(want), "{t}: {e}");
        };
        bad("$aws/things/t/jobs/get/accepted", "not a jobs request");
        bad("$aws/things/t/shadow/get", "not a jobs request");
        bad(
            "$aws/things/t/jobs/$next/update",
            "$next names no execution",
        );
        bad("$aws/things/t/jobs/a:b/get", "found ':'");
        bad(
            &format!("$aws/things/t/jobs/{}/get", "j".repeat(65)),
            "at most 64",
        );
        bad("$aws/things/t!/jobs/get", "invalid thing name");
        let r = RequestTopic::parse("$aws/things/t/jobs/j/update").unwrap();
        assert_eq!(r.accepted(), "$aws/things/t/jobs/j/update/accepted");
        assert_eq!(r.rejected(), "$aws/things/t/jobs/j/update/rejected");
    }
}
