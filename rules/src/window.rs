//! Windowed aggregation for the edge, in the syntax eKuiper users know: `GROUP BY TUMBLINGWINDOW(ss,
//! 60), topic(2)` with `avg min max sum count` in SELECT and an optional HAVING.
//!
//! The host owns the clock: [`Window::on_message`] takes the message and a [`Context`] whose `now_ms`
//! places it in time, [`Window::poll`] closes windows whose end has passed, and
//! [`Window::next_deadline`] says when the next one will close, so a test can drive a window through
//! hours in microseconds. Time never runs backwards inside a window state: an earlier `now_ms` than one
//! already seen is treated as the latest seen.
//!
//! Semantics:
//! - WHERE is applied to each message before it enters a window.
//! - Time windows are aligned to the Unix epoch: `TUMBLINGWINDOW(ss, 60)` covers [k·60 s, (k+1)·60 s);
//!   `HOPPINGWINDOW(ss, 60, 10)` has a window of 60 s starting every 10 s, and a message counts in each
//!   window that covers it. A window closes when `now_ms >= end`; a message at exactly `end` belongs to
//!   the next window.
//! - `COUNTWINDOW(n)` closes after `n` messages that passed WHERE (counted over all groups).
//! - Each group (the values of the non-window GROUP BY expressions) gives one row. Aggregates ignore
//!   Undefined and non-numeric values (`count(expr)` counts values that are neither Undefined nor Null,
//!   `count(*)` counts messages). Expressions outside aggregates are evaluated against the group's last
//!   message; `window_start()`/`window_end()` give the window's bounds in ms.
//! - `SET` variables are evaluated for each message (for WHERE, group keys and aggregate arguments) and
//!   again against the group's last message when its row is built.
//! - Each row carries the largest hop count among the messages that fed it ([`WindowRow::hops`]): a
//!   host that counts rule republishes to cut loops (Grove's gateway does) then sees a windowed rule
//!   that republishes into its own `FROM` climb towards its limit, instead of restarting at 0 with
//!   every window. [`Window::on_message`] and [`Window::poll`] are the same without hop counts.
//! - Windows with no messages emit nothing. The number of groups per window is not bounded here; a
//!   host that groups by an unbounded key (a client id, say) bounds memory by its choice of key.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::compile::{Program, Rule, WindowSpec};
use crate::eval::{Context, Env, Message, Output};
use crate::functions::AggKind;
use crate::value::{Num, Val};

/// One aggregate's running state.
#[derive(Debug, Clone)]
enum Acc {
    Count(i64),
    Sum {
        /// The exact sum while every input is an Int and no overflow happened.
        int: Option<i64>,
        total: f64,
        seen: bool,
    },
    Avg {
        total: f64,
        n: u64,
    },
    Min(Option<Num>),
    Max(Option<Num>),
}

impl Acc {
    fn new(kind: AggKind) -> Acc {
        match kind {
            AggKind::Count => Acc::Count(0),
            AggKind::Sum => Acc::Sum {
                int: Some(0),
                total: 0.0,
                seen: false,
            },
            AggKind::Avg => Acc::Avg { total: 0.0, n: 0 },
            AggKind::Min => Acc::Min(None),
            AggKind::Max => Acc::Max(None),
        }
    }

    /// Adds one input; `None` means `count(*)`'s "a message".
    fn add(&mut self, v: Option<&Val<'_>>) {
        if let Acc::Count(c) = self {
            if v.is_none_or(|v| !matches!(v, Val::Undef | Val::Null)) {
                *c += 1;
            }
            return;
        }
        let Some(n) = v.and_then(Val::to_num) else {
            return;
        };
        let better = |cur: &Option<Num>, want_less: bool| match cur {
            None => true,
            Some(c) => match (n, *c) {
                (Num::Int(a), Num::Int(b)) => (a < b) == want_less && a != b,
                (a, b) => (a.as_f64() < b.as_f64()) == want_less && a.as_f64() != b.as_f64(),
            },
        };
        match self {
            Acc::Count(_) => {}
            Acc::Sum { int, total, seen } => {
                *seen = true;
                *total += n.as_f64();
                *int = match (*int, n) {
                    (Some(a), Num::Int(b)) => a.checked_add(b),
                    _ => None,
                };
            }
            Acc::Avg { total, n: count } => {
                *total += n.as_f64();
                *count += 1;
            }
            Acc::Min(cur) => {
                if better(cur, true) {
                    *cur = Some(n);
                }
            }
            Acc::Max(cur) => {
                if better(cur, false) {
                    *cur = Some(n);
                }
            }
        }
    }

    fn result(&self) -> Val<'static> {
        match self {
            Acc::Count(c) => Val::Int(*c),
            Acc::Sum { seen: false, .. } => Val::Undef,
            Acc::Sum { int: Some(i), .. } => Val::Int(*i),
            Acc::Sum { total, .. } => crate::value::dec(*total),
            Acc::Avg { n: 0, .. } => Val::Undef,
            Acc::Avg { total, n } => crate::value::dec(*total / *n as f64),
            Acc::Min(v) | Acc::Max(v) => v.map_or(Val::Undef, Num::into_val),
        }
    }
}

/// One group's aggregates within one window.
#[derive(Debug)]
struct Row {
    accs: Vec<Acc>,
    /// The latest message of the group, for expressions outside aggregates.
    last: Arc<Message>,
    /// The largest hop count among the group's messages.
    hops: u32,
}

/// A row of a closed window, with the largest hop count among the messages that fed it (0 when the
/// host passes none).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowRow {
    /// The row, as a non-windowed rule's output.
    pub output: Output,
    /// The largest `hops` passed with a message of the row's group in this window.
    pub hops: u32,
}

/// The groups of one window, in order of first appearance (so output order is deterministic).
#[derive(Debug, Default)]
struct Groups {
    by_key: HashMap<String, usize>,
    rows: Vec<Row>,
}

/// The running state of one windowed rule. Create it with [`Rule::window`].
#[derive(Debug)]
pub struct Window {
    rule: Rule,
    /// The latest `now_ms` seen.
    now: i64,
    /// Open time windows by their start (tumbling and hopping windows).
    open: BTreeMap<i64, Groups>,
    /// The count window's groups, how many messages it holds, and when its first one arrived.
    counted: Groups,
    count: u64,
    count_start: i64,
}

impl Rule {
    /// A fresh window state for this rule, or `None` if the rule has no window.
    pub fn window(&self) -> Option<Window> {
        self.program.window.map(|_| Window {
            rule: self.clone(),
            now: i64::MIN,
            open: BTreeMap::new(),
            counted: Groups::default(),
            count: 0,
            count_start: 0,
        })
    }
}

/// A group key: the group expressions' values as JSON text (Undefined as its own marker).
fn group_key(program: &Program, env: &Env<'_, '_>) -> String {
    let mut key = String::new();
    for g in &program.group_keys {
        match g.eval(env).into_json() {
            Some(v) => key.push_str(&v.to_string()),
            None => key.push('\u{0}'),
        }
        key.push('\u{1}');
    }
    key
}

impl Groups {
    fn add(
        &mut self,
        program: &Program,
        key: &str,
        (msg, hops): (&Arc<Message>, u32),
        env: &Env<'_, '_>,
    ) {
        let i = match self.by_key.get(key) {
            Some(i) => *i,
            None => {
                self.rows.push(Row {
                    accs: program.aggs.iter().map(|a| Acc::new(a.kind)).collect(),
                    last: Arc::clone(msg),
                    hops,
                });
                self.by_key.insert(key.to_string(), self.rows.len() - 1);
                self.rows.len() - 1
            }
        };
        let row = &mut self.rows[i];
        row.last = Arc::clone(msg);
        row.hops = row.hops.max(hops);
        for (acc, spec) in row.accs.iter_mut().zip(&program.aggs) {
            match &spec.arg {
                None => acc.add(None),
                Some(e) => acc.add(Some(&e.eval(env))),
            }
        }
    }

    /// The output rows of a closed window.
    fn emit(
        self,
        program: &Program,
        bounds: (i64, i64),
        ctx: &Context<'_>,
        out: &mut Vec<WindowRow>,
    ) {
        for row in self.rows {
            let aggs: Vec<Val<'static>> = row.accs.iter().map(Acc::result).collect();
            let vars = program.bind_vars(&row.last, ctx);
            let env = Env {
                msg: &row.last,
                ctx,
                aggs: &aggs,
                window: Some(bounds),
                vars: &vars,
            };
            let keep = program
                .having
                .as_ref()
                .is_none_or(|h| h.eval(&env).to_bool() == Some(true));
            if keep {
                out.extend(program.project(&env).map(|output| WindowRow {
                    output,
                    hops: row.hops,
                }));
            }
        }
    }
}

impl Window {
    fn size_ms(&self) -> i64 {
        match self.rule.program.window {
            Some(WindowSpec::Tumbling { size_ms } | WindowSpec::Hopping { size_ms, .. }) => size_ms,
            _ => 0,
        }
    }

    /// Feeds one message at `ctx.now_ms`. Returns the rows of any windows that closed (those that ended
    /// at or before `now_ms`, and a count window that this message filled).
    pub fn on_message(&mut self, msg: &Message, ctx: &Context<'_>) -> Vec<Output> {
        outputs(self.on_message_with_hops(msg, 0, ctx))
    }

    /// [`Window::on_message`] for a message that `hops` rule republishes led to; each row carries
    /// the largest hop count of its messages.
    pub fn on_message_with_hops(
        &mut self,
        msg: &Message,
        hops: u32,
        ctx: &Context<'_>,
    ) -> Vec<WindowRow> {
        let mut out = self.poll_with_hops(ctx);
        let now = self.now;
        let program = Arc::clone(&self.rule.program);
        let vars = program.bind_vars(msg, ctx);
        let env = Env::message(msg, ctx, &vars);
        if !program.passes_where(&env) {
            return out;
        }
        let key = group_key(&program, &env);
        let shared = Arc::new(msg.clone());
        let fed = (&shared, hops);
        match program.window {
            Some(WindowSpec::Tumbling { size_ms }) => {
                let start = now.div_euclid(size_ms) * size_ms;
                self.open
                    .entry(start)
                    .or_default()
                    .add(&program, &key, fed, &env);
            }
            Some(WindowSpec::Hopping { size_ms, hop_ms }) => {
                let mut start = Some(now.div_euclid(hop_ms) * hop_ms);
                while let Some(s) = start.filter(|s| *s > now.saturating_sub(size_ms)) {
                    self.open
                        .entry(s)
                        .or_default()
                        .add(&program, &key, fed, &env);
                    start = s.checked_sub(hop_ms);
                }
            }
            Some(WindowSpec::Count { n }) => {
                if self.count == 0 {
                    self.count_start = now;
                }
                self.counted.add(&program, &key, fed, &env);
                self.count += 1;
                if self.count >= n {
                    let groups = std::mem::take(&mut self.counted);
                    self.count = 0;
                    groups.emit(&program, (self.count_start, now), ctx, &mut out);
                }
            }
            None => {}
        }
        out
    }

    /// Closes every time window that ended at or before `ctx.now_ms` and returns their rows, oldest
    /// window first.
    pub fn poll(&mut self, ctx: &Context<'_>) -> Vec<Output> {
        outputs(self.poll_with_hops(ctx))
    }

    /// [`Window::poll`] with each row's hop count (see [`Window::on_message_with_hops`]).
    pub fn poll_with_hops(&mut self, ctx: &Context<'_>) -> Vec<WindowRow> {
        self.now = self.now.max(ctx.now_ms);
        let size = self.size_ms();
        let mut out = Vec::new();
        while let Some(entry) = self.open.first_entry() {
            let start = *entry.key();
            if start.saturating_add(size) > self.now {
                break;
            }
            let groups = entry.remove();
            groups.emit(&self.rule.program, (start, start + size), ctx, &mut out);
        }
        out
    }

    /// When the next open time window closes (ms), so the host can schedule a `poll`. `None` when no
    /// time window is open (count windows close on messages only).
    pub fn next_deadline(&self) -> Option<i64> {
        let size = self.size_ms();
        self.open
            .keys()
            .next()
            .map(|start| start.saturating_add(size))
    }
}

/// The outputs of rows, for hosts that do not count hops.
fn outputs(rows: Vec<WindowRow>) -> Vec<Output> {
    rows.into_iter().map(|r| r.output).collect()
}
