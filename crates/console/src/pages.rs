//! The console's pages, rendered on the server with maud (which escapes every value: a device
//! chooses its client id, so nothing it sends may become markup).
//!
//! Each page has a live part, a fragment that the page's stream (server-sent events) sends again
//! whenever it changes; `assets/console.js` swaps it in. Without JavaScript the pages still show
//! the state at load and every action works (plain forms).

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use axum::response::Html;
use grove_auth::identity::Device;
use maud::{html, Markup, DOCTYPE};

use crate::core::{Point, Reading};
use crate::shell::{
    ADD_DEVICE, CANCEL_JOB, CLOUD, CLOUD_EVENTS, DEPLOY, DEPLOYMENTS, DEPLOYMENTS_EVENTS, DEVICES,
    DEVICES_EVENTS, DISCONNECT, FUNCTION, FUNCTIONS, FUNCTIONS_EVENTS, FUNCTION_EVENTS, INVOKE,
    OVERVIEW, OVERVIEW_EVENTS, REMOVE_DEVICE, ROLLBACK, RULES, RULES_EVENTS, RULES_RELOAD,
    RULE_SAVE, RULE_TEST, SCRIPT, SET_ALIAS, SET_DESIRED, SHADOW, SHADOWS, SHADOW_EVENTS, SIGN_IN,
    SIGN_OUT, STYLE, TOPICS, TOPICS_EVENTS, TOPICS_SHOWN,
};
use crate::{
    Alias, Client, Deployments, FunctionRow, RuleRow, ShadowDoc, ShadowEntry, Watched,
    SHOWN_PAYLOAD,
};

/// What the overview shows.
pub(crate) struct Overview {
    pub(crate) uptime: Duration,
    pub(crate) points: Vec<Point>,
    pub(crate) reading: Reading,
}

/// What the devices page shows.
pub(crate) struct Devices {
    pub(crate) clients: Vec<Client>,
    /// The registered identities, or why the devices file could not be read.
    pub(crate) identities: Result<Vec<Device>, String>,
}

/// Which page a layout is for (the navigation marks it).
#[derive(PartialEq, Eq)]
enum Nav {
    Overview,
    Devices,
    Topics,
    Shadows,
    Rules,
    Functions,
    Deployments,
    Cloud,
}

/// One function as its page shows it.
pub(crate) struct Function {
    pub(crate) row: FunctionRow,
    /// Its recent log lines, oldest first.
    pub(crate) logs: Vec<String>,
}

/// What a function's page answers to a form: an invocation's answer envelope, or why the
/// invocation or the alias was refused.
pub(crate) enum FunctionSaid {
    Answer(serde_json::Value),
    InvokeRefused(String),
    AliasRefused(String),
}

/// The rules page's form: a rule, the statement to test on a message or to save as its SQL.
#[derive(serde::Deserialize)]
pub(crate) struct RuleTest {
    #[serde(default)]
    pub(crate) rule: String,
    pub(crate) sql: String,
    #[serde(default)]
    pub(crate) topic: String,
    #[serde(default)]
    pub(crate) payload: String,
    #[serde(default)]
    pub(crate) client_id: String,
}

impl RuleTest {
    /// The form as the page first shows it: the rule named `name` (else the first) with its
    /// SQL, and an empty JSON object from `console`.
    pub(crate) fn of(rows: &[RuleRow], name: &str) -> RuleTest {
        let chosen = rows.iter().find(|r| r.name == name).or(rows.first());
        RuleTest {
            rule: chosen.map(|r| r.name.clone()).unwrap_or_default(),
            sql: chosen.map(|r| r.sql.clone()).unwrap_or_default(),
            topic: String::new(),
            payload: "{}".into(),
            client_id: "console".into(),
        }
    }
}

/// What the rules page answers to a form: a test's outputs, the rules running after a reload or
/// a rule's change; `Err`: why not.
pub(crate) enum Said {
    Test(Result<String, String>),
    Reload(Result<Vec<String>, String>),
    Saved(Result<Vec<String>, String>),
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="color-scheme" content="light dark";
            title { (title) " · Grove console" }
            link rel="stylesheet" href=(STYLE);
            script src=(SCRIPT) defer {}
        }
    }
}

fn layout(title: &str, nav: Nav, csrf: &str, body: Markup) -> Html<String> {
    let current = |n: Nav| (nav == n).then_some("page");
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title))
                body {
                    a.skip href="#main" { "Skip to content" }
                    header {
                        span.brand { "Grove" }
                        nav aria-label="Console" {
                            a href=(OVERVIEW) aria-current=[current(Nav::Overview)] { "Overview" }
                            a href=(DEVICES) aria-current=[current(Nav::Devices)] { "Devices" }
                            a href=(TOPICS) aria-current=[current(Nav::Topics)] { "Topics" }
                            a href=(SHADOWS) aria-current=[current(Nav::Shadows)] { "Shadows" }
                            a href=(RULES) aria-current=[current(Nav::Rules)] { "Rules" }
                            a href=(FUNCTIONS) aria-current=[current(Nav::Functions)] { "Functions" }
                            a href=(DEPLOYMENTS) aria-current=[current(Nav::Deployments)] { "Deployments" }
                            a href=(CLOUD) aria-current=[current(Nav::Cloud)] { "Cloud" }
                        }
                        form.signout method="post" action=(SIGN_OUT) {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                    main #main {
                        h1 { (title) }
                        (body)
                    }
                }
            }
        }
        .into_string(),
    )
}

/// The sign-in page; `password_set` false says how to set one.
pub(crate) fn sign_in(password_set: bool, error: Option<&str>) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head("Sign in"))
                body {
                    main #main .signin {
                        h1 { "Grove console" }
                        @if !password_set {
                            p role="alert" {
                                "No operator password is set. On the gateway, run "
                                code { "grove console passwd" } "."
                            }
                        }
                        @if let Some(error) = error {
                            p.error role="alert" { (error) }
                        }
                        form method="post" action=(SIGN_IN) {
                            label for="password" { "Operator password" }
                            input #password type="password" name="password"
                                autocomplete="current-password" required autofocus;
                            button type="submit" { "Sign in" }
                        }
                    }
                }
            }
        }
        .into_string(),
    )
}

/// The overview page.
pub(crate) fn overview(csrf: &str, o: &Overview) -> Html<String> {
    layout(
        "Overview",
        Nav::Overview,
        csrf,
        html! {
            div #live data-stream=(OVERVIEW_EVENTS) { (overview_live(o)) }
            p.note { "Charts: the last hour, one point every 5 s." }
        },
    )
}

/// The overview's live part.
pub(crate) fn overview_live(o: &Overview) -> Markup {
    let r = &o.reading;
    let last = o.points.last().copied().unwrap_or_default();
    let series = |f: fn(&Point) -> f64| o.points.iter().map(|p| (p.age, f(p))).collect::<Vec<_>>();
    html! {
        dl.facts {
            div { dt { "Health" } dd #health { "ok" } }
            div { dt { "Version" } dd { (env!("CARGO_PKG_VERSION")) } }
            div { dt { "Uptime" } dd #uptime { (humantime::format_duration(Duration::from_secs(o.uptime.as_secs()))) } }
            div { dt { "Connected clients" } dd #connected { (r.connected) } }
            div { dt { "Cloud outbox" } dd #outbox { (r.outbox) " messages, draining " (format!("{:.1}", last.drain_rate)) "/s" } }
        }
        div.charts {
            (chart("Connected clients", &format!("{}", r.connected), &series(|p| p.connected)))
            (chart("Messages in", &format!("{:.1}/s", last.in_rate), &series(|p| p.in_rate)))
            (chart("Messages out", &format!("{:.1}/s", last.out_rate), &series(|p| p.out_rate)))
            (chart("Cloud outbox", &format!("{}", r.outbox), &series(|p| p.outbox)))
            (chart("Outbox drained", &format!("{:.1}/s", last.drain_rate), &series(|p| p.drain_rate)))
            (chart("CPU", &format!("{:.0} %", last.cpu * 100.0), &series(|p| p.cpu * 100.0)))
            (chart("Memory (RSS)", &format!("{:.1} MiB", r.rss_bytes as f64 / 1048576.0), &series(|p| p.rss_mib)))
        }
    }
}

/// A small line chart over the last hour: x is the age (an hour wide), y from 0 to the largest
/// value.
fn chart(title: &str, now: &str, series: &[(f64, f64)]) -> Markup {
    const W: f64 = 300.0;
    const H: f64 = 60.0;
    let top = series.iter().map(|(_, v)| *v).fold(0.0, f64::max);
    let scale = if top > 0.0 { (H - 4.0) / top } else { 0.0 };
    let points = series
        .iter()
        .map(|(age, v)| {
            let x = W - (age / 3600.0 * W).min(W);
            format!("{x:.1},{:.1}", H - 2.0 - v * scale)
        })
        .collect::<Vec<_>>()
        .join(" ");
    let label = format!("{title}: {now} now, at most {top:.1} in the last hour");
    html! {
        figure.chart {
            figcaption { span { (title) } strong { (now) } }
            svg viewBox="0 0 300 60" preserveAspectRatio="none" role="img" aria-label=(label) {
                line.axis x1="0" y1="59" x2="300" y2="59" {}
                polyline points=(points) {}
            }
        }
    }
}

/// The devices page.
pub(crate) fn devices(csrf: &str, d: &Devices, refused: Option<&str>) -> Html<String> {
    layout(
        "Devices",
        Nav::Devices,
        csrf,
        html! {
            div #live data-stream=(DEVICES_EVENTS) { (devices_live(csrf, d)) }
            h2 #add { "Register a device" }
            form.add-device method="post" action=(ADD_DEVICE) {
                input type="hidden" name="csrf" value=(csrf);
                label for="device-id" { "Device id (its MQTT client id)" }
                input #device-id name="id" required autocomplete="off";
                label for="device-thing" { "Thing name (optional: the id)" }
                input #device-thing name="thing" autocomplete="off";
                label for="device-password" { "Password (optional)" }
                input #device-password type="password" name="password" autocomplete="new-password";
                label.check { input #device-certificate type="checkbox" name="certificate"; " Issue a client certificate (downloaded once: the certificate, its key and the gateway's CA)" }
                button #add-device type="submit" { "Register" }
            }
            @if let Some(why) = refused { p #device-refused.error role="alert" { (why) } }
            p.note { "The same as grove device add and grove device remove: new credentials replace the old ones, and a removed device's connections are closed before the page comes back." }
        },
    )
}

/// The topics page: a filter to watch and, once one is given, its messages as they come.
pub(crate) fn topics(csrf: &str, filter: &str) -> Html<String> {
    let stream = (!filter.is_empty()).then(|| link(TOPICS_EVENTS, &[("filter", filter)]));
    layout(
        "Topics",
        Nav::Topics,
        csrf,
        html! {
            form.watch method="get" action=(TOPICS) {
                label for="filter" { "Topic filter" }
                input #filter type="text" name="filter" value=(filter) required
                    placeholder="sensors/+/temperature" autocomplete="off" spellcheck="false";
                button type="submit" { "Watch" }
            }
            p.note {
                "Every message on the filter, newest first (the last " (TOPICS_SHOWN) "); JSON is \
                 shown pretty-printed, payloads up to " (SHOWN_PAYLOAD / 1024) " KiB. Shared \
                 subscriptions ($share/...) are not offered: a viewer would take messages from \
                 the group."
            }
            @if let Some(stream) = stream {
                div #live data-stream=(stream) { (topics_live(filter, std::iter::empty())) }
            }
        },
    )
}

/// The topics page's live part: `shown`, fragments from [`watched`], newest first.
pub(crate) fn topics_live<'a>(filter: &str, shown: impl Iterator<Item = &'a str>) -> Markup {
    let mut shown = shown.peekable();
    html! {
        @if shown.peek().is_none() {
            p #messages { "Watching " code { (filter) } ": no message yet." }
        } @else {
            ol #messages.messages aria-label="Messages, newest first" {
                @for m in shown { (maud::PreEscaped(m)) }
            }
        }
    }
}

/// One watched message (rendered once, when it arrives): its topic, size and payload, JSON
/// pretty-printed, other text as it is, anything else in hex.
pub(crate) fn watched(m: &Watched) -> Markup {
    let whole = m.payload.len() == m.size;
    let json = whole
        .then(|| serde_json::from_slice::<serde_json::Value>(&m.payload).ok())
        .flatten()
        .map(|v| pretty(&v));
    let (kind, shown) = match (json, std::str::from_utf8(&m.payload)) {
        (Some(pretty), _) => ("JSON", pretty),
        (None, Ok(text)) => ("text", text.to_owned()),
        (None, Err(_)) => ("binary, hex", hex::encode(&m.payload)),
    };
    let time = humantime::format_rfc3339_seconds(SystemTime::now());
    html! {
        li.message {
            div.meta {
                code.topic { (m.topic) }
                span { (m.size) " B, " (kind) " · " (time.to_string()) }
            }
            pre.payload { (shown) @if !whole { "\n… (" (m.size - m.payload.len()) " more bytes not shown)" } }
        }
    }
}

/// `path` with `query` (URL-encoded).
fn link(path: &str, query: &[(&str, &str)]) -> String {
    format!(
        "{path}?{}",
        serde_urlencoded::to_string(query).unwrap_or_default()
    )
}

/// `path` (a shadow's page or its stream) with the shadow's query: its thing and, for a named
/// shadow, its name (empty: the classic shadow).
pub(crate) fn shadow_link(path: &str, thing: &str, shadow: Option<&str>) -> String {
    link(path, &[("thing", thing), ("shadow", shadow.unwrap_or(""))])
}

/// The rules page with its test form starting from rule `name`'s statement.
fn rule_link(name: &str) -> String {
    link(RULES, &[("rule", name)]) + "#test"
}

/// The shadows page: every shadow (or those whose thing or name contains `q`), each a link to
/// its page.
pub(crate) fn shadows(
    csrf: &str,
    q: &str,
    listed: &Result<Vec<ShadowEntry>, String>,
) -> Html<String> {
    layout(
        "Shadows",
        Nav::Shadows,
        csrf,
        html! {
            form.watch method="get" action=(SHADOWS) role="search" {
                label for="q" { "Search" }
                input #q type="search" name="q" value=(q) placeholder="thing or shadow name" autocomplete="off";
                button type="submit" { "Search" }
            }
            @match listed {
                Err(why) => p.error role="alert" { "Cannot list the shadows: " (why) },
                Ok(list) if list.is_empty() => p #shadows { "No shadow" @if !q.is_empty() { " matches " code { (q) } } "." },
                Ok(list) => div.scroll {
                    table #shadows {
                        caption.visually-hidden { "Shadows" }
                        thead { tr { th scope="col" { "Thing" } th scope="col" { "Shadow" } th scope="col" { "Version" } } }
                        tbody {
                            @for s in list {
                                tr {
                                    td { a href=(shadow_link(SHADOW, &s.thing, s.shadow.as_deref())) { (s.thing) } }
                                    td { (s.shadow.as_deref().unwrap_or("(classic)")) }
                                    td { (s.version) }
                                }
                            }
                        }
                    }
                },
            }
        },
    )
}

/// A shadow's page: its live document (desired, reported and the delta between them side by
/// side) and a form that sets its desired state. `edit`: the text an operator sent and why it
/// was refused.
pub(crate) fn shadow(
    csrf: &str,
    thing: &str,
    shadow: Option<&str>,
    doc: &Result<ShadowDoc, String>,
    edit: Option<(&str, &str)>,
) -> Html<String> {
    let stream = shadow_link(SHADOW_EVENTS, thing, shadow);
    let desired = match (edit, doc) {
        (Some((text, _)), _) => text.to_owned(),
        (None, Ok(d)) => d.desired.as_ref().map_or("{}".to_owned(), pretty),
        (None, Err(_)) => "{}".to_owned(),
    };
    let title = match shadow {
        None => format!("{thing} (classic shadow)"),
        Some(name) => format!("{thing} / {name}"),
    };
    layout(
        &title,
        Nav::Shadows,
        csrf,
        html! {
            div #live data-stream=(stream) { (shadow_live(doc)) }
            h2 { "Set the desired state" }
            form.desired method="post" action=(SET_DESIRED) {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="thing" value=(thing);
                input type="hidden" name="shadow" value=(shadow.unwrap_or(""));
                label for="desired" { "Desired (JSON, merged as an update: null removes a key)" }
                textarea #desired name="desired" rows="8" spellcheck="false" { (desired) }
                @if let Some((_, why)) = edit { p.error role="alert" { (why) } }
                button type="submit" { "Update desired" }
            }
            p.note { "Versions are not kept beyond the current one (nor are they by AWS IoT); every accepted update is published on its update/documents topic, which the topics page can watch." }
        },
    )
}

/// A shadow's live part: its version, and desired, reported and delta side by side, the delta
/// marked.
pub(crate) fn shadow_live(doc: &Result<ShadowDoc, String>) -> Markup {
    let section = |v: &Option<serde_json::Value>| v.as_ref().map_or("(none)".to_owned(), pretty);
    html! {
        @match doc {
            Err(why) => p #document.error role="alert" { (why) },
            Ok(d) => {
                p #document { "Version " (d.version) @if d.delta.is_some() { " · a delta is pending: the device has not reported what is desired" } }
                div.sides {
                    section { h2 { "Desired" } pre.payload #desired-now { (section(&d.desired)) } }
                    section { h2 { "Reported" } pre.payload #reported-now { (section(&d.reported)) } }
                    section.delta[d.delta.is_some()] { h2 { "Delta" } pre.payload #delta-now { (section(&d.delta)) } }
                }
            }
        }
    }
}

/// The cloud page: the link's status, live.
pub(crate) fn cloud(csrf: &str, status: &Result<Vec<(String, String)>, String>) -> Html<String> {
    layout(
        "Cloud",
        Nav::Cloud,
        csrf,
        html! {
            div #live data-stream=(CLOUD_EVENTS) { (cloud_live(status)) }
            p.note { "The same status as grove cloud status, asked every 2 s; the outbox's depth and drain rate over the last hour are on the overview." }
        },
    )
}

/// The cloud page's live part.
pub(crate) fn cloud_live(status: &Result<Vec<(String, String)>, String>) -> Markup {
    html! {
        @match status {
            Err(why) => p #cloud.error role="alert" { "Cannot read the cloud link's status: " (why) },
            Ok(lines) => dl #cloud.facts {
                @for (label, text) in lines {
                    @if label.is_empty() { div { dd { (text) } } }
                    @else { div { dt { (label) } dd { (text) } } }
                }
            },
        }
    }
}

/// The rules page: the rules running with their counters and last failures (live), a form that
/// tries a statement on a message as `grove rules test` does, and the reload from the
/// configuration file. `said`: the answer to the form just sent.
pub(crate) fn rules(
    csrf: &str,
    rows: &[RuleRow],
    form: &RuleTest,
    said: Option<&Said>,
) -> Html<String> {
    layout(
        "Rules",
        Nav::Rules,
        csrf,
        html! {
            div #live data-stream=(RULES_EVENTS) { (rules_live(rows)) }
            form.reload method="post" action=(RULES_RELOAD) {
                input type="hidden" name="csrf" value=(csrf);
                button type="submit" { "Reload the rules from the configuration file" }
            }
            @if let Some(Said::Reload(outcome)) = said {
                @match outcome {
                    Ok(names) => p #reloaded role="status" { "Reloaded; running: " (names.join(", ")) },
                    Err(why) => pre #reloaded.error role="alert" { "Not reloaded: " (why) },
                }
            }
            h2 #test { "Edit and test a rule" }
            // The answer is shown below the form: the browser is sent to it.
            form.rule-test method="post" action={ (RULE_TEST) "#outcome" } {
                input type="hidden" name="csrf" value=(csrf);
                label for="rule" { "Rule" }
                select #rule name="rule" {
                    @for r in rows { option value=(r.name) selected[r.name == form.rule] { (r.name) } }
                }
                label for="sql" { "SQL" }
                textarea #sql name="sql" rows="4" spellcheck="false" required { (form.sql) }
                label for="topic" { "Topic of the test message" }
                input #topic name="topic" value=(form.topic);
                label for="client_id" { "From client id" }
                input #client_id name="client_id" value=(form.client_id);
                label for="payload" { "Payload" }
                textarea #payload name="payload" rows="4" spellcheck="false" { (form.payload) }
                div.buttons {
                    button #run-test type="submit" { "Test on the message" }
                    button #save type="submit" formaction={ (RULE_SAVE) "#outcome" } { "Save as the rule's SQL and apply" }
                }
            }
            @match said {
                Some(Said::Test(Ok(out))) => pre #outcome.payload role="status" { (out) },
                Some(Said::Saved(Ok(names))) => p #outcome role="status" { "Saved in the configuration file and applied; running: " (names.join(", ")) },
                Some(Said::Test(Err(why)) | Said::Saved(Err(why))) => pre #outcome.error role="alert" { (why) },
                _ => {}
            }
            p.note { "A test evaluates the statement on one message and publishes nothing (a window is given the message and then closed). Saving sets the rule's sql in the configuration file, the rest of the file as it was, then reloads as grove rules reload and SIGHUP do; if the reload fails the file is put back. The reload button applies changes made in the file by hand." }
        },
    )
}

/// The rules page's live part: each rule with its counters and last failure.
pub(crate) fn rules_live(rows: &[RuleRow]) -> Markup {
    html! {
        @if rows.is_empty() {
            p #rules { "No rules are configured ([[rules]] in the configuration file)." }
        } @else {
            div.scroll {
                table #rules {
                    caption { "Rules running, in their order" }
                    (columns(&["Rule", "SQL and actions", "Matched", "Outputs", "Failed actions", "Dropped", "Last failure"]))
                    tbody {
                        @for r in rows {
                            tr data-rule=(r.name) {
                                th scope="row" {
                                    (r.name)
                                    @if !r.enabled { " (disabled)" }
                                    br;
                                    a href=(rule_link(&r.name)) { "test" }
                                }
                                td {
                                    code { (r.sql) }
                                    ul {
                                        @for a in &r.actions { li { (a) } }
                                        @if let Some(e) = &r.error_action { li { "on error: " (e) } }
                                    }
                                }
                                td.num { (r.matched) } td.num { (r.outputs) }
                                td.num.failed[r.failures > 0] { (r.failures) }
                                td.num { (r.dropped) }
                                td {
                                    @match &r.last_failure {
                                        None => "none",
                                        Some((at, line)) => { (since(*at)) ": " (line) },
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `path` (a function's page or its stream) for function `name`.
pub(crate) fn function_link(path: &str, name: &str) -> String {
    link(path, &[("name", name)])
}

/// The functions page: every function deployed with its versions, aliases, triggers and
/// counters, live, each a link to its page; and the upload form that deploys a version.
/// `refused`: why the upload just sent was not deployed.
pub(crate) fn functions_with(
    csrf: &str,
    rows: &Result<Vec<FunctionRow>, String>,
    refused: Option<&str>,
) -> Html<String> {
    // The guard does not read a multipart body: the token is in the action's query string.
    let action = link(DEPLOY, &[("csrf", csrf)]);
    layout(
        "Functions",
        Nav::Functions,
        csrf,
        html! {
            div #live data-stream=(FUNCTIONS_EVENTS) { (functions_live(rows)) }
            h2 { "Deploy a version" }
            form.deploy method="post" action=(action) enctype="multipart/form-data" {
                label for="module" { "Module (.wasm, at most 4 MiB)" }
                input #module type="file" name="module" accept=".wasm,application/wasm" required;
                label for="manifest" { "Manifest (TOML: name, triggers, grants, limits)" }
                textarea #manifest name="manifest" rows="6" spellcheck="false" required { "name = \"\"\n" }
                label for="deploy-alias" { "Point this alias at it (optional)" }
                input #deploy-alias name="alias";
                button #deploy type="submit" { "Deploy" }
            }
            @if let Some(why) = refused { pre #deploy-refused.error role="alert" { (why) } }
            p.note { "The same as grove fn deploy: the module is checked and compiled before the version exists. A function's page invokes it, points its aliases and shows its log." }
        },
    )
}

/// An alias as one line: `live → 3`, or `live → 3, 10 % to 4`.
fn alias_line(a: &Alias) -> String {
    match a.weight {
        None => format!("{} → {}", a.name, a.version),
        Some((other, percent)) => format!("{} → {}, {percent} % to {other}", a.name, a.version),
    }
}

/// The functions page's live part.
pub(crate) fn functions_live(rows: &Result<Vec<FunctionRow>, String>) -> Markup {
    html! {
        @match rows {
            Err(why) => p #functions.error role="alert" { (why) },
            Ok(rows) if rows.is_empty() => p #functions { "No function is deployed." },
            Ok(rows) => div.scroll { table #functions {
                caption { "Functions deployed" }
                (columns(&["Function", "$LATEST", "Aliases", "Triggers", "Succeeded", "Failed", "Dead letters"]))
                tbody {
                    @for f in rows {
                        tr data-function=(f.name) {
                            th scope="row" { a href=(function_link(FUNCTION, &f.name)) { (f.name) } }
                            td.num { (f.latest) }
                            td { (f.aliases.iter().map(alias_line).collect::<Vec<_>>().join("; ")) }
                            td { (f.triggers.join(", ")) }
                            td.num { (f.succeeded) }
                            td.num.failed[f.failed > 0] { (f.failed) }
                            td.num { (f.dead_letters) }
                        }
                    }
                }
            } },
        }
    }
}

/// A function's page: its versions, aliases and log (live), a form that invokes it and one that
/// points an alias. `said`: the answer to the form just sent.
pub(crate) fn function(
    csrf: &str,
    name: &str,
    now: &Result<Function, String>,
    said: Option<&FunctionSaid>,
) -> Html<String> {
    let stream = function_link(FUNCTION_EVENTS, name);
    layout(
        name,
        Nav::Functions,
        csrf,
        html! {
            div #live data-stream=(stream) { (function_live(now)) }
            @if now.is_ok() {
                h2 { "Invoke" }
                form.invoke method="post" action={ (INVOKE) "#answer" } {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="name" value=(name);
                    label for="qualifier" { "Version or alias (empty: $LATEST)" }
                    input #qualifier name="qualifier";
                    label for="payload" { "Event (the payload, as a trigger's message would carry it)" }
                    textarea #payload name="payload" rows="4" spellcheck="false" { "{}" }
                    button #invoke type="submit" { "Invoke" }
                }
                @match said {
                    Some(FunctionSaid::Answer(envelope)) => pre #answer.payload role="status" { (pretty(envelope)) },
                    Some(FunctionSaid::InvokeRefused(why)) => p #answer.error role="alert" { (why) },
                    _ => {}
                }
                h2 { "Point an alias" }
                form.alias method="post" action=(SET_ALIAS) {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="name" value=(name);
                    label for="alias" { "Alias" }
                    input #alias name="alias" required;
                    label for="version" { "Version" }
                    input #version name="version" inputmode="numeric" required;
                    label for="weight_version" { "Also a second version (optional)" }
                    input #weight_version name="weight_version" inputmode="numeric";
                    label for="weight_percent" { "taking this percent of invocations" }
                    input #weight_percent name="weight_percent" inputmode="numeric";
                    button type="submit" { "Set the alias" }
                }
                @if let Some(FunctionSaid::AliasRefused(why)) = said {
                    p #alias-refused.error role="alert" { (why) }
                }
            }
        },
    )
}

/// A function's live part: versions, aliases, triggers, counters and its log.
pub(crate) fn function_live(now: &Result<Function, String>) -> Markup {
    html! {
        @match now {
            Err(why) => p #function.error role="alert" { (why) },
            Ok(Function { row: f, logs }) => {
                dl #function.facts {
                    div { dt { "$LATEST" } dd { (f.latest) } }
                    div { dt { "Versions" } dd { (f.versions.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")) } }
                    div { dt { "Succeeded" } dd { (f.succeeded) } }
                    div { dt { "Failed" } dd { (f.failed) } }
                    div { dt { "Dead letters" } dd { (f.dead_letters) } }
                }
                ul.plain {
                    @for a in &f.aliases { li { "Alias " (alias_line(a)) } }
                    @for t in &f.triggers { li { "Triggered by " code { (t) } } }
                    @for (version, why) in &f.unavailable { li.error { "Version " (version) " cannot be invoked: " (why) } }
                }
                h2 { "Log" }
                @if logs.is_empty() { p #log { "Nothing logged yet." } }
                @else { pre #log.payload { @for line in logs { (line) "\n" } } }
            }
        }
    }
}

/// The deployments page: the deployment running, every deployment with its step and why it
/// failed, and the jobs for devices with their executions, live; a rollback, and a job's cancel.
/// `said`: the answer to the form just sent.
pub(crate) fn deployments(
    csrf: &str,
    now: &Result<Deployments, String>,
    said: Option<&Result<String, String>>,
) -> Html<String> {
    layout(
        "Deployments and jobs",
        Nav::Deployments,
        csrf,
        html! {
            @match said {
                Some(Ok(done)) => p #said role="status" { (done) },
                Some(Err(why)) => p #said.error role="alert" { (why) },
                None => {}
            }
            div #live data-stream=(DEPLOYMENTS_EVENTS) { (deployments_live(csrf, now)) }
            form.rollback method="post" action=(ROLLBACK) {
                input type="hidden" name="csrf" value=(csrf);
                button.danger #rollback type="submit" { "Roll back (the deployment applying, else the one running)" }
            }
            p.note { "Deployments come from grove deploy or AWS IoT Jobs on the cloud link; jobs for devices from grove jobs. A rollback is grove deploy rollback." }
        },
    )
}

/// The deployments page's live part.
pub(crate) fn deployments_live(csrf: &str, now: &Result<Deployments, String>) -> Markup {
    html! {
        @match now {
            Err(why) => p #deployments.error role="alert" { (why) },
            Ok(d) => {
                p #deployments {
                    @match &d.committed {
                        Some(id) => { "Running deployment " strong { (id) } "." },
                        None => "No deployment has been committed: the configuration file's functions and rules run.",
                    }
                }
                @if !d.history.is_empty() {
                    div.scroll { table #history {
                        caption { "Deployments, newest first" }
                        (columns(&["Id", "Step", "Received", "From job", "Why"]))
                        tbody { @for r in &d.history {
                            tr data-deployment=(r.id) {
                                th scope="row" { (r.id) } td { (r.phase) } td { (since(r.received)) }
                                td { (r.job.as_deref().unwrap_or("")) } td { (r.reason.as_deref().unwrap_or("")) }
                            }
                        } }
                    } }
                }
                @match &d.jobs {
                    Err(why) => p #jobs.error role="alert" { (why) },
                    Ok(jobs) if jobs.is_empty() => p #jobs { "No jobs for devices." },
                    Ok(jobs) => div.scroll { table #jobs {
                        caption { "Jobs for devices" }
                        (columns(&["Job", "Status", "Targets", "Executions", "Created", ""]))
                        tbody { @for j in jobs {
                            tr data-job=(j.id) {
                                th scope="row" { (j.id) }
                                td { (j.status) @if let Some(r) = &j.reason { " (" (r) ")" } }
                                td { (j.targets) }
                                td { (j.counts.iter().map(|(status, n)| format!("{n} {status}")).collect::<Vec<_>>().join(", ")) }
                                td { (since(j.created)) }
                                td { @if j.status == "IN_PROGRESS" {
                                    form method="post" action=(CANCEL_JOB) {
                                        input type="hidden" name="csrf" value=(csrf);
                                        input type="hidden" name="id" value=(j.id);
                                        label { input type="checkbox" name="force"; " and executions in progress" }
                                        button.danger type="submit" aria-label={ "Cancel " (j.id) } { "Cancel" }
                                    }
                                } }
                            }
                        } }
                    } },
                }
            }
        }
    }
}

/// A table's head: one column header each; an empty one (a column of buttons) is named for
/// screen readers only.
fn columns(names: &[&str]) -> Markup {
    html! {
        thead { tr {
            @for name in names {
                @if name.is_empty() { th scope="col" { span.visually-hidden { "Action" } } }
                @else { th scope="col" { (name) } }
            }
        } }
    }
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn protocol(level: u8) -> &'static str {
    match level {
        5 => "MQTT 5",
        _ => "MQTT 3.1.1",
    }
}

fn since(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The devices page's live part: the connected clients and the registered identities.
pub(crate) fn devices_live(csrf: &str, d: &Devices) -> Markup {
    let connected: HashSet<&str> = d.clients.iter().map(|c| c.client_id.as_str()).collect();
    html! {
        section aria-labelledby="connected-title" {
            h2 #connected-title { "Connected now (" (d.clients.len()) ")" }
            div.scroll {
                table #clients {
                    (columns(&["Client id", "Address", "Protocol", "Since", "Messages in / out", ""]))
                    tbody {
                        @for c in &d.clients {
                            tr data-client=(c.client_id) data-peer=(c.peer) {
                                th scope="row" { code { (c.client_id) } }
                                td { (c.peer) }
                                td { (protocol(c.protocol)) }
                                td { time datetime=(since(c.since)) { (since(c.since)) } }
                                td { (c.received) " / " (c.sent) }
                                td {
                                    form method="post" action=(DISCONNECT) {
                                        input type="hidden" name="csrf" value=(csrf);
                                        input type="hidden" name="client_id" value=(c.client_id);
                                        button.danger type="submit" aria-label={ "Disconnect " (c.client_id) } { "Disconnect" }
                                    }
                                }
                            }
                        }
                        @if d.clients.is_empty() {
                            tr { td colspan="6" { "No client is connected." } }
                        }
                    }
                }
            }
        }
        section aria-labelledby="identities-title" {
            h2 #identities-title { "Registered identities (devices.toml)" }
            @match &d.identities {
                Err(e) => p.error role="alert" { "Cannot read the devices file: " (e) }
                Ok(ids) if ids.is_empty() => p { "No device is registered (the form below, or " code { "grove device add" } ")." }
                Ok(ids) => div.scroll {
                    table #identities {
                        (columns(&["Device id", "Thing", "Signs in with", "Policy", "Connected", ""]))
                        tbody {
                            @for id in ids {
                                tr {
                                    th scope="row" { code { (id.id) } }
                                    td { (id.thing()) }
                                    td { (credentials(id)) }
                                    td { (id.policy.as_deref().unwrap_or("the listener's")) }
                                    td { @if connected.contains(id.id.as_str()) { "yes" } @else { "no" } }
                                    td {
                                        form method="post" action=(REMOVE_DEVICE) {
                                            input type="hidden" name="csrf" value=(csrf);
                                            input type="hidden" name="id" value=(id.id);
                                            button.danger type="submit" aria-label={ "Remove " (id.id) } { "Remove" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn credentials(d: &Device) -> &'static str {
    match (d.password_hash.is_some(), d.certificate_sha256.is_some()) {
        (true, true) => "password and certificate",
        (true, false) => "password",
        (false, true) => "certificate",
        (false, false) => "nothing (cannot sign in)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_id_with_markup_is_shown_as_text() {
        let d = Devices {
            clients: vec![Client {
                client_id: "<script>alert(1)</script>".into(),
                peer: "127.0.0.1:5000".parse().unwrap(),
                protocol: 5,
                since: SystemTime::UNIX_EPOCH,
                received: 1,
                sent: 2,
            }],
            identities: Ok(Vec::new()),
        };
        let html = devices_live("t", &d).into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(html.contains("MQTT 5") && html.contains("1970-01-01T00:00:00Z"));
    }

    #[test]
    fn a_watched_payload_is_shown_as_json_text_or_hex_and_says_what_was_cut() {
        let shown = |payload: &[u8], size: usize| {
            watched(&Watched {
                topic: "t".into(),
                payload: payload.to_vec(),
                size,
            })
            .into_string()
        };
        let json = shown(br#"{"a":[1,2]}"#, 11);
        assert!(json.contains("11 B, JSON"), "{json}");
        assert!(
            json.contains("{\n  &quot;a&quot;: [\n    1,\n    2\n  ]\n}"),
            "{json}"
        );
        let binary = shown(&[0xff, 0x00, 0x10], 3);
        assert!(
            binary.contains("binary, hex") && binary.contains("ff0010"),
            "{binary}"
        );
        // Cut: not parsed as JSON (it would be invalid), shown as text with what is missing.
        let cut = shown(br#"{"a":"#, 5000);
        assert!(cut.contains("5000 B, text"), "{cut}");
        assert!(cut.contains("4995 more bytes not shown"), "{cut}");
    }

    #[test]
    fn the_overview_shows_how_fast_the_cloud_outbox_drains() {
        let mut h = crate::core::History::new(Duration::from_secs(3600), Duration::from_secs(5));
        let t0 = std::time::Instant::now();
        let reading = |outbox, drained| Reading {
            outbox,
            drained,
            ..Reading::default()
        };
        h.push(t0, reading(500, 1_000));
        h.push(t0 + Duration::from_secs(5), reading(440, 1_060));
        let o = Overview {
            uptime: Duration::from_secs(10),
            points: h.points(),
            reading: reading(440, 1_060),
        };
        let html = overview_live(&o).into_string();
        assert!(html.contains("440 messages, draining 12.0/s"), "{html}");
        assert!(html.contains("Outbox drained: 12.0/s now"), "{html}");
    }

    #[test]
    fn a_chart_spans_the_hour_and_scales_to_its_largest_value() {
        let m = chart("In", "2/s", &[(3600.0, 0.0), (0.0, 10.0)]).into_string();
        assert!(m.contains(r#"points="0.0,58.0 300.0,2.0""#), "{m}");
        assert!(
            m.contains("In: 2/s now, at most 10.0 in the last hour"),
            "{m}"
        );
    }
}
