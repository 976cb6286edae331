//! Evaluation: the message and context a host passes in, the compiled expression form, and the code
//! that runs it.
//!
//! A compiled expression ([`CExpr`]) has its functions resolved, its paths split into keys and its
//! literals turned into values, so evaluating it is a walk over a small tree with no text handling.
//! Everything a rule may observe from outside (topic, client id, payload, the time, fresh UUIDs) comes
//! from [`Message`] and [`Context`]; the crate reads no clock and draws no random numbers.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::ast::BinOp;
use crate::functions::{self, Func};
use crate::value::{binary, dec, negate, not, sql_eq, Num, Val};

/// An incoming MQTT message, with its payload parsed as JSON once (if it is JSON) so that many rules
/// can evaluate it without parsing it again.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    topic: String,
    client_id: String,
    payload: Vec<u8>,
    /// The payload as JSON, or `None` when it is not JSON (then only `*`, `encode(*, 'base64')` and
    /// functions see it, as with AWS's binary payloads).
    json: Option<Value>,
}

impl Message {
    /// A message published on `topic` by `client_id` (AWS uses `n/a` when there is no MQTT client).
    pub fn new(
        topic: impl Into<String>,
        client_id: impl Into<String>,
        payload: impl Into<Vec<u8>>,
    ) -> Self {
        let payload = payload.into();
        let json = serde_json::from_slice(&payload).ok();
        Message {
            topic: topic.into(),
            client_id: client_id.into(),
            payload,
            json,
        }
    }

    /// The topic the message was published on.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The publishing client's id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The raw payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The payload parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<&Value> {
        self.json.as_ref()
    }
}

/// Where `newuuid()` gets its UUIDs. The host decides (random v4 in the gateway, a counter in tests);
/// any `Fn() -> String` is one.
pub trait UuidSource {
    /// A fresh UUID in its usual text form.
    fn new_uuid(&self) -> String;
}

impl<F: Fn() -> String> UuidSource for F {
    fn new_uuid(&self) -> String {
        self()
    }
}

/// What a rule sees of the world besides the message: the time and a UUID source.
#[derive(Clone, Copy)]
pub struct Context<'u> {
    /// Milliseconds since the Unix epoch, as `timestamp()` returns and windows use.
    pub now_ms: i64,
    /// The source for `newuuid()`.
    pub uuids: &'u dyn UuidSource,
}

impl<'u> Context<'u> {
    /// A context at `now_ms` that draws UUIDs from `uuids`.
    pub fn new(now_ms: i64, uuids: &'u dyn UuidSource) -> Self {
        Context { now_ms, uuids }
    }
}

/// What a rule produces for its actions.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A JSON document (the usual case).
    Json(Value),
    /// The raw payload of a non-JSON message passed through by `SELECT *`, as AWS does for binary
    /// payloads.
    Binary(Vec<u8>),
}

impl Output {
    /// The bytes to publish: the JSON serialised, or the raw payload.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            // Straight into a `Vec` (`to_string` goes through `fmt::Write`, a call per token):
            // once per republished message. Serialising a `Value` cannot fail.
            Output::Json(v) => serde_json::to_vec(v).unwrap_or_default(),
            Output::Binary(b) => b.clone(),
        }
    }

    /// The JSON document, if the output is JSON.
    pub fn as_json(&self) -> Option<&Value> {
        match self {
            Output::Json(v) => Some(v),
            Output::Binary(_) => None,
        }
    }
}

/// Target types of `cast(x AS type)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CastTy {
    Int,
    /// `Decimal`: in SQL 2016-03-23 whole results come back as Int (AWS documents this quirk).
    Decimal,
    /// `Double`: always a Decimal.
    Double,
    Str,
    Bool,
}

/// A compiled expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CExpr {
    Const(Value),
    /// A path from the payload's top level, e.g. `a.b.c` as `["a", "b", "c"]`.
    Path(Vec<String>),
    Field(Box<CExpr>, String),
    Index(Box<CExpr>, Box<CExpr>),
    /// `topic(n)` with a constant `n`, resolved to a segment index at compile time.
    TopicSegment(usize),
    Call(Func, Vec<CExpr>),
    Cast(Box<CExpr>, CastTy),
    Neg(Box<CExpr>),
    Not(Box<CExpr>),
    Bin(BinOp, Box<CExpr>, Box<CExpr>),
    Case {
        operand: Option<Box<CExpr>>,
        whens: Vec<(CExpr, CExpr)>,
        otherwise: Option<Box<CExpr>>,
    },
    Array(Vec<CExpr>),
    Object(Vec<(String, CExpr)>),
    /// The value of the n-th aggregate of a windowed rule, when a window closes.
    Agg(usize),
    /// The value of the n-th `SET @var` variable.
    Var(usize),
}

/// Everything an expression can read while it runs. `'v` is the (shorter) borrow of the SET variables'
/// values, so they can be computed one after another, each seeing the ones before.
pub(crate) struct Env<'a, 'v> {
    pub(crate) msg: &'a Message,
    pub(crate) ctx: &'a Context<'a>,
    /// Aggregate results, when evaluating a closed window's row.
    pub(crate) aggs: &'a [Val<'static>],
    /// The closed window's [start, end) in ms, for `window_start()`/`window_end()`.
    pub(crate) window: Option<(i64, i64)>,
    /// The values of the `SET @var` variables bound so far.
    pub(crate) vars: &'v [Val<'a>],
}

impl<'a, 'v> Env<'a, 'v> {
    /// The environment of one message outside any window: no aggregates, no window bounds.
    pub(crate) fn message(msg: &'a Message, ctx: &'a Context<'a>, vars: &'v [Val<'a>]) -> Self {
        Env {
            msg,
            ctx,
            aggs: &[],
            window: None,
            vars,
        }
    }
}

fn cast<'a>(v: Val<'a>, ty: CastTy) -> Val<'a> {
    let whole_or_dec = |d: f64| {
        if d.fract() == 0.0 && d.abs() < 9.0e18 {
            Val::Int(d as i64)
        } else {
            dec(d)
        }
    };
    match ty {
        CastTy::Int => match v {
            Val::Bool(b) => Val::Int(i64::from(b)),
            other => other.to_int().map_or(Val::Undef, Val::Int),
        },
        CastTy::Decimal => match v {
            Val::Bool(b) => Val::Int(i64::from(b)),
            other => match other.to_num() {
                Some(Num::Int(i)) => Val::Int(i),
                Some(Num::Dec(d)) => whole_or_dec(d),
                None => Val::Undef,
            },
        },
        CastTy::Double => match v {
            Val::Bool(b) => Val::Dec(if b { 1.0 } else { 0.0 }),
            other => other.to_num().map_or(Val::Undef, |n| dec(n.as_f64())),
        },
        CastTy::Str => v
            .to_string_val()
            .map_or(Val::Undef, |s| Val::Str(Cow::Owned(s))),
        CastTy::Bool => match v {
            Val::Int(i) => Val::Bool(i != 0),
            Val::Dec(d) => Val::Bool(d != 0.0),
            other => other.to_bool().map_or(Val::Undef, Val::Bool),
        },
    }
}

impl CExpr {
    /// Evaluates the expression against the environment.
    pub(crate) fn eval<'a>(&'a self, env: &Env<'a, '_>) -> Val<'a> {
        match self {
            CExpr::Const(v) => Val::from_ref(v),
            CExpr::Path(keys) => {
                let Some(mut cur) = env.msg.json() else {
                    return Val::Undef;
                };
                for key in keys {
                    // `Value::get` with a string key only looks into objects.
                    match cur.get(key.as_str()) {
                        Some(next) => cur = next,
                        None => return Val::Undef,
                    }
                }
                Val::from_ref(cur)
            }
            CExpr::Field(base, key) => base.eval(env).field(key),
            CExpr::Index(base, index) => {
                let index = index.eval(env);
                base.eval(env).get(&index)
            }
            CExpr::TopicSegment(n) => env
                .msg
                .topic()
                .split('/')
                .nth(*n)
                .map_or(Val::Undef, |s| Val::Str(Cow::Borrowed(s))),
            CExpr::Call(f, args) => {
                let args = args.iter().map(|a| a.eval(env)).collect();
                functions::call(*f, args, env)
            }
            CExpr::Cast(e, ty) => cast(e.eval(env), *ty),
            CExpr::Neg(e) => negate(e.eval(env)),
            CExpr::Not(e) => not(e.eval(env)),
            CExpr::Bin(op, l, r) => binary(*op, l.eval(env), r.eval(env)),
            CExpr::Case {
                operand,
                whens,
                otherwise,
            } => {
                let subject = match operand {
                    Some(op) => match op.eval(env) {
                        Val::Undef => return Val::Undef,
                        v => Some(v),
                    },
                    None => None,
                };
                for (when, then) in whens {
                    let w = when.eval(env);
                    let hit = match &subject {
                        Some(s) => sql_eq(s, &w) == Some(true),
                        None => w.to_bool() == Some(true),
                    };
                    if hit {
                        return then.eval(env);
                    }
                }
                otherwise.as_ref().map_or(Val::Undef, |e| e.eval(env))
            }
            CExpr::Array(items) => Val::Arr(Cow::Owned(
                items
                    .iter()
                    .filter_map(|i| i.eval(env).into_json())
                    .collect(),
            )),
            CExpr::Object(pairs) => {
                let mut map = Map::with_capacity(pairs.len());
                for (k, e) in pairs {
                    if let Some(v) = e.eval(env).into_json() {
                        map.insert(k.clone(), v);
                    }
                }
                Val::Obj(Cow::Owned(map))
            }
            CExpr::Agg(i) => env.aggs.get(*i).cloned().unwrap_or(Val::Undef),
            CExpr::Var(i) => env.vars.get(*i).cloned().unwrap_or(Val::Undef),
        }
    }
}
