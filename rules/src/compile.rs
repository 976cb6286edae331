//! The compiler: checks a parsed statement and turns it into a [`Rule`] that evaluates without looking
//! at text again.
//!
//! Everything that can be known before a message arrives is checked here, with the position of the
//! problem: the `FROM` filter, function names and arities, cloud-only functions, `cast` types,
//! aggregates outside windowed rules, misuse of `*`, and the window clause itself.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::ast::{self, ExprKind, Lit, SelectItem, Statement, UnOp};
use crate::error::{CompileError, EvalError};
use crate::eval::{CExpr, CastTy, Context, Env, Message, Output};
use crate::functions::{lookup, AggKind, Func, Lookup};
use crate::index::validate_filter;
use crate::parser;
use crate::value::Val;

/// One part of the SELECT list, compiled.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Part {
    /// `*`: the payload's keys.
    Star,
    /// An expression written at `path` in the output (a dotted alias gives a longer path).
    Item { path: Vec<String>, expr: CExpr },
}

/// What SELECT produces.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Projection {
    /// `SELECT VALUE expr`: the value itself.
    Value(CExpr),
    /// `SELECT a, b AS c, *`: an object.
    Object(Vec<Part>),
}

/// The window clause of a windowed rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WindowSpec {
    /// `TUMBLINGWINDOW(unit, n)`: back-to-back windows of `size_ms`, aligned to the epoch.
    Tumbling { size_ms: i64 },
    /// `HOPPINGWINDOW(unit, size, hop)`: windows of `size_ms` starting every `hop_ms`.
    Hopping { size_ms: i64, hop_ms: i64 },
    /// `COUNTWINDOW(n)`: a window closes after `n` messages (that passed WHERE).
    Count { n: u64 },
}

/// An aggregate call in a windowed rule: what it computes and over which expression (`None` is
/// `count(*)`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AggSpec {
    pub(crate) kind: AggKind,
    pub(crate) arg: Option<CExpr>,
}

/// The compiled form of a rule.
#[derive(Debug)]
pub(crate) struct Program {
    pub(crate) sql: String,
    pub(crate) from: String,
    /// `SET @var = expr` expressions, in order; `CExpr::Var(i)` reads the i-th.
    pub(crate) vars: Vec<CExpr>,
    pub(crate) where_: Option<CExpr>,
    pub(crate) projection: Projection,
    pub(crate) window: Option<WindowSpec>,
    pub(crate) group_keys: Vec<CExpr>,
    pub(crate) having: Option<CExpr>,
    pub(crate) aggs: Vec<AggSpec>,
}

/// A compiled rule: cheap to clone (the compiled program is shared), safe to share between threads.
/// Two rules are equal when their SQL text is (compiling is deterministic).
#[derive(Debug, Clone)]
pub struct Rule {
    pub(crate) program: Arc<Program>,
}

impl PartialEq for Rule {
    fn eq(&self, other: &Self) -> bool {
        self.sql() == other.sql()
    }
}

impl Eq for Rule {}

impl Rule {
    /// Parses and checks `sql`. Errors carry the line, column and a caret line.
    pub fn compile(sql: &str) -> Result<Rule, CompileError> {
        let stmt = parser::parse_statement(sql)?;
        let program = compile_statement(sql, &stmt)?;
        Ok(Rule {
            program: Arc::new(program),
        })
    }

    /// The SQL text the rule was compiled from.
    pub fn sql(&self) -> &str {
        &self.program.sql
    }

    /// The topic filter of `FROM`, for subscribing or indexing.
    pub fn topic_filter(&self) -> &str {
        &self.program.from
    }

    /// Whether the rule aggregates over a window (then feed it through [`crate::Window`]).
    pub fn is_windowed(&self) -> bool {
        self.program.window.is_some()
    }

    /// Runs the rule on one message: `Ok(None)` when WHERE is not true or SELECT VALUE gives
    /// Undefined. Windowed rules return [`EvalError::Windowed`]; use [`crate::Window`] for them.
    pub fn evaluate(&self, msg: &Message, ctx: &Context<'_>) -> Result<Option<Output>, EvalError> {
        if self.is_windowed() {
            return Err(EvalError::Windowed);
        }
        let vars = self.program.bind_vars(msg, ctx);
        let env = Env::message(msg, ctx, &vars);
        if !self.program.passes_where(&env) {
            return Ok(None);
        }
        Ok(self.program.project(&env))
    }
}

impl Program {
    /// Evaluates the `SET` variables in order (each sees the ones before it) against `msg`.
    pub(crate) fn bind_vars<'a>(&'a self, msg: &'a Message, ctx: &'a Context<'a>) -> Vec<Val<'a>> {
        let mut vars = Vec::with_capacity(self.vars.len());
        for e in &self.vars {
            let env = Env::message(msg, ctx, &vars);
            let value = e.eval(&env);
            vars.push(value);
        }
        vars
    }

    /// WHERE is evaluated before SELECT and must be true (a Boolean, or the string "true").
    pub(crate) fn passes_where(&self, env: &Env<'_, '_>) -> bool {
        self.where_
            .as_ref()
            .is_none_or(|w| w.eval(env).to_bool() == Some(true))
    }

    /// Builds the output of SELECT.
    pub(crate) fn project(&self, env: &Env<'_, '_>) -> Option<Output> {
        match &self.projection {
            Projection::Value(e) => e.eval(env).into_json().map(Output::Json),
            Projection::Object(parts) => {
                if let [Part::Star] = parts.as_slice() {
                    // `SELECT *` passes the payload through unchanged, JSON or not.
                    return Some(match env.msg.json() {
                        Some(json) => Output::Json(json.clone()),
                        None => Output::Binary(env.msg.payload().to_vec()),
                    });
                }
                let mut out = Map::with_capacity(parts.len());
                for part in parts {
                    match part {
                        Part::Star => {
                            if let Some(Value::Object(payload)) = env.msg.json() {
                                out.extend(payload.iter().map(|(k, v)| (k.clone(), v.clone())));
                            }
                        }
                        Part::Item { path, expr } => {
                            if let Some(v) = expr.eval(env).into_json() {
                                insert_path(&mut out, path, v);
                            }
                        }
                    }
                }
                Some(Output::Json(Value::Object(out)))
            }
        }
    }
}

/// Writes `value` at a dotted alias path, creating (or replacing non-object) intermediate objects.
fn insert_path(map: &mut Map<String, Value>, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            map.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let slot = map
                .entry(first.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            if let Value::Object(inner) = slot {
                insert_path(inner, rest, value);
            }
        }
    }
}

/// Where an expression appears, which decides what it may contain.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Clause {
    Select,
    Where,
    GroupBy,
    Having,
    /// The right-hand side of `SET @var = ...`.
    Set,
    /// A `${...}` substitution template.
    Template,
}

/// The compiler's state for one statement.
struct Compiler<'s> {
    src: &'s str,
    windowed: bool,
    aggs: Vec<AggSpec>,
    /// The names of the `SET` variables defined so far, in slot order.
    vars: Vec<String>,
}

/// Compiles a single expression for a substitution template.
pub(crate) fn compile_template_expr(src: &str, e: &ast::Expr) -> Result<CExpr, CompileError> {
    let mut c = Compiler {
        src,
        windowed: false,
        aggs: Vec::new(),
        vars: Vec::new(),
    };
    c.expr(e, Clause::Template, false)
}

fn compile_statement(src: &str, stmt: &Statement) -> Result<Program, CompileError> {
    validate_filter(&stmt.from)
        .map_err(|e| CompileError::semantic(src, stmt.from_at, e.to_string()))?;
    let mut c = Compiler {
        src,
        windowed: false,
        aggs: Vec::new(),
        vars: Vec::new(),
    };
    let mut window = None;
    let mut group_exprs = Vec::new();
    for g in &stmt.group_by {
        if let ExprKind::Call(name, args) = &g.kind {
            if matches!(lookup(name), Lookup::Window) {
                if window.is_some() {
                    return Err(c.err(g.at, "a rule can have only one window in GROUP BY"));
                }
                window = Some(c.window(name, args, g.at)?);
                continue;
            }
        }
        group_exprs.push(g);
    }
    if !stmt.group_by.is_empty() && window.is_none() {
        return Err(c.err(
            stmt.group_by[0].at,
            "GROUP BY needs a window: TUMBLINGWINDOW(unit, n), HOPPINGWINDOW(unit, size, hop) or COUNTWINDOW(n)",
        ));
    }
    c.windowed = window.is_some();
    let mut vars = Vec::with_capacity(stmt.sets.len());
    for (name, expr, at) in &stmt.sets {
        if c.vars.iter().any(|v| v == name) {
            return Err(c.err(*at, format!("variable @{name} is assigned twice")));
        }
        // Compiled before the name is in scope, so `SET @a = @a + 1` is an error.
        vars.push(c.expr(expr, Clause::Set, false)?);
        c.vars.push(name.clone());
    }
    let group_keys = group_exprs
        .into_iter()
        .map(|g| c.expr(g, Clause::GroupBy, false))
        .collect::<Result<Vec<_>, _>>()?;
    let where_ = stmt
        .where_
        .as_ref()
        .map(|w| c.expr(w, Clause::Where, false))
        .transpose()?;
    let projection = if stmt.value {
        match stmt.items.as_slice() {
            [SelectItem::Expr { expr, alias: None }] => {
                Projection::Value(c.expr(expr, Clause::Select, false)?)
            }
            [SelectItem::Expr { alias: Some(_), .. }] => {
                return Err(c.err(stmt.items_at, "SELECT VALUE takes an expression without AS"))
            }
            _ => {
                return Err(c.err(
                    stmt.items_at,
                    "SELECT VALUE takes exactly one expression (not '*')",
                ))
            }
        }
    } else {
        let mut parts = Vec::with_capacity(stmt.items.len());
        for (i, item) in stmt.items.iter().enumerate() {
            parts.push(match item {
                SelectItem::Star => Part::Star,
                SelectItem::Expr { expr, alias } => Part::Item {
                    path: alias.clone().unwrap_or_else(|| vec![default_name(expr, i)]),
                    expr: c.expr(expr, Clause::Select, false)?,
                },
            });
        }
        Projection::Object(parts)
    };
    let having = match &stmt.having {
        Some(h) if !c.windowed => {
            return Err(c.err(h.at, "HAVING needs GROUP BY with a window"));
        }
        Some(h) => Some(c.expr(h, Clause::Having, false)?),
        None => None,
    };
    Ok(Program {
        sql: src.to_string(),
        from: stmt.from.clone(),
        vars,
        where_,
        projection,
        window,
        group_keys,
        having,
        aggs: c.aggs,
    })
}

/// The output key of an item without AS: a path's last key, a function's name, otherwise `_<n>` (the
/// 1-based position). AWS does not document its naming of unnamed computed items, so give those an
/// alias when the same output is needed on AWS.
fn default_name(e: &ast::Expr, position: usize) -> String {
    match &e.kind {
        ExprKind::Ident(name) | ExprKind::Field(_, name) => name.clone(),
        ExprKind::Call(name, _) => name.to_ascii_lowercase(),
        _ => format!("_{}", position + 1),
    }
}

/// The most hopping windows one message may fall into.
const MAX_OVERLAP: i64 = 1000;

fn time_unit_ms(unit: &str) -> Option<i64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "ms" => 1,
        "ss" => 1_000,
        "mi" => 60_000,
        "hh" => 3_600_000,
        "dd" => 86_400_000,
        _ => return None,
    })
}

impl Compiler<'_> {
    fn err(&self, at: usize, message: impl Into<String>) -> CompileError {
        CompileError::semantic(self.src, at, message)
    }

    /// A positive integer literal argument of a window function.
    fn positive(&self, e: &ast::Expr, what: &str) -> Result<i64, CompileError> {
        match e.kind {
            ExprKind::Lit(Lit::Int(n)) if n > 0 => Ok(n),
            _ => Err(self.err(e.at, format!("{what} must be a positive integer literal"))),
        }
    }

    fn window(
        &self,
        name: &str,
        args: &[ast::Expr],
        at: usize,
    ) -> Result<WindowSpec, CompileError> {
        let lower = name.to_ascii_lowercase();
        let unit = |e: &ast::Expr| {
            match &e.kind {
                ExprKind::Ident(u) => time_unit_ms(u).ok_or(()),
                _ => Err(()),
            }
            .map_err(|()| self.err(e.at, "time unit must be one of ms, ss, mi, hh, dd"))
        };
        let scaled = |n: i64, unit_ms: i64, e: &ast::Expr| {
            n.checked_mul(unit_ms)
                .ok_or_else(|| self.err(e.at, "window length is too large"))
        };
        match (lower.as_str(), args) {
            ("tumblingwindow", [u, n]) => Ok(WindowSpec::Tumbling {
                size_ms: scaled(self.positive(n, "window length")?, unit(u)?, n)?,
            }),
            ("hoppingwindow", [u, size, hop]) => {
                let unit_ms = unit(u)?;
                let size_ms = scaled(self.positive(size, "window length")?, unit_ms, size)?;
                let hop_ms = scaled(self.positive(hop, "hop length")?, unit_ms, hop)?;
                // Each message is added to size/hop windows; bound that so a rule cannot make every
                // message cost millions of updates.
                if size_ms / hop_ms > MAX_OVERLAP {
                    return Err(self.err(
                        hop.at,
                        format!("HOPPINGWINDOW would put each message in more than {MAX_OVERLAP} windows; use a larger hop"),
                    ));
                }
                Ok(WindowSpec::Hopping { size_ms, hop_ms })
            }
            ("countwindow", [n]) => Ok(WindowSpec::Count {
                n: self.positive(n, "window count")?.unsigned_abs(),
            }),
            ("tumblingwindow", _) => Err(self.err(at, "TUMBLINGWINDOW takes (unit, length)")),
            ("hoppingwindow", _) => Err(self.err(at, "HOPPINGWINDOW takes (unit, length, hop)")),
            ("countwindow", _) => Err(self.err(at, "COUNTWINDOW takes (count)")),
            _ => Err(self.err(
                at,
                format!("{name} is not supported by Grove; use TUMBLINGWINDOW, HOPPINGWINDOW or COUNTWINDOW"),
            )),
        }
    }

    fn expr(&mut self, e: &ast::Expr, clause: Clause, in_agg: bool) -> Result<CExpr, CompileError> {
        Ok(match &e.kind {
            ExprKind::Lit(lit) => CExpr::Const(match lit {
                Lit::Null => Value::Null,
                Lit::Bool(b) => Value::Bool(*b),
                Lit::Int(i) => Value::from(*i),
                Lit::Dec(d) => Value::from(*d),
                Lit::Str(s) => Value::String(s.clone()),
            }),
            ExprKind::Ident(name) => CExpr::Path(vec![name.clone()]),
            ExprKind::Var(name) => match self.vars.iter().position(|v| v == name) {
                Some(i) => CExpr::Var(i),
                None if clause == Clause::Template => {
                    return Err(self.err(
                        e.at,
                        format!(
                        "@{name}: SET variables are not available in Grove substitution templates"
                    ),
                    ))
                }
                None => {
                    return Err(self.err(
                        e.at,
                        format!(
                        "unknown variable @{name}; define it with SET @{name} = ... before SELECT"
                    ),
                    ))
                }
            },
            ExprKind::Star => {
                return Err(self.err(
                    e.at,
                    "'*' as an argument is only allowed in encode(*, 'base64') and count(*)",
                ))
            }
            ExprKind::Field(base, key) => match self.expr(base, clause, in_agg)? {
                CExpr::Path(mut keys) => {
                    keys.push(key.clone());
                    CExpr::Path(keys)
                }
                other => CExpr::Field(Box::new(other), key.clone()),
            },
            ExprKind::Index(base, index) => CExpr::Index(
                Box::new(self.expr(base, clause, in_agg)?),
                Box::new(self.expr(index, clause, in_agg)?),
            ),
            ExprKind::Call(name, args) => self.call(name, args, e.at, clause, in_agg)?,
            ExprKind::Cast(inner, ty) => {
                let ty = match ty.to_ascii_lowercase().as_str() {
                    "int" | "integer" => CastTy::Int,
                    "decimal" => CastTy::Decimal,
                    "double" => CastTy::Double,
                    "string" | "nvarchar" | "text" | "ntext" | "varchar" => CastTy::Str,
                    "bool" | "boolean" => CastTy::Bool,
                    _ => {
                        return Err(self.err(
                            e.at,
                            format!("unknown type '{ty}' in cast; expected Int, Decimal, Double, String or Boolean"),
                        ))
                    }
                };
                CExpr::Cast(Box::new(self.expr(inner, clause, in_agg)?), ty)
            }
            ExprKind::Unary(UnOp::Neg, inner) => match self.expr(inner, clause, in_agg)? {
                // Fold `-5` into a constant so literals cost nothing at run time.
                CExpr::Const(Value::Number(n)) if n.as_i64().is_some_and(|i| i != i64::MIN) => {
                    CExpr::Const(Value::from(-n.as_i64().unwrap_or_default()))
                }
                CExpr::Const(Value::Number(n)) if n.is_f64() => {
                    CExpr::Const(Value::from(-n.as_f64().unwrap_or_default()))
                }
                other => CExpr::Neg(Box::new(other)),
            },
            ExprKind::Unary(UnOp::Not, inner) => {
                CExpr::Not(Box::new(self.expr(inner, clause, in_agg)?))
            }
            ExprKind::Binary(op, l, r) => CExpr::Bin(
                *op,
                Box::new(self.expr(l, clause, in_agg)?),
                Box::new(self.expr(r, clause, in_agg)?),
            ),
            ExprKind::Case {
                operand,
                whens,
                otherwise,
            } => CExpr::Case {
                operand: operand
                    .as_ref()
                    .map(|o| self.expr(o, clause, in_agg).map(Box::new))
                    .transpose()?,
                whens: whens
                    .iter()
                    .map(|(w, t)| {
                        Ok((self.expr(w, clause, in_agg)?, self.expr(t, clause, in_agg)?))
                    })
                    .collect::<Result<_, CompileError>>()?,
                otherwise: otherwise
                    .as_ref()
                    .map(|o| self.expr(o, clause, in_agg).map(Box::new))
                    .transpose()?,
            },
            ExprKind::Array(items) => CExpr::Array(
                items
                    .iter()
                    .map(|i| self.expr(i, clause, in_agg))
                    .collect::<Result<_, _>>()?,
            ),
            ExprKind::Object(pairs) => CExpr::Object(
                pairs
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), self.expr(v, clause, in_agg)?)))
                    .collect::<Result<_, CompileError>>()?,
            ),
        })
    }

    fn call(
        &mut self,
        name: &str,
        args: &[ast::Expr],
        at: usize,
        clause: Clause,
        in_agg: bool,
    ) -> Result<CExpr, CompileError> {
        match lookup(name) {
            Lookup::Func(f, min, max) => {
                if args.len() < min || args.len() > max {
                    let takes = match (min, max) {
                        (a, b) if a == b => format!("{a}"),
                        (a, usize::MAX) => format!("at least {a}"),
                        (a, b) => format!("{a} or {b}"),
                    };
                    return Err(self.err(
                        at,
                        format!("{name}() takes {takes} argument(s), got {}", args.len()),
                    ));
                }
                if matches!(f, Func::WindowStart | Func::WindowEnd)
                    && !(self.windowed && matches!(clause, Clause::Select | Clause::Having))
                {
                    return Err(self.err(
                        at,
                        format!(
                            "{name}() is only available in the SELECT or HAVING of a windowed rule"
                        ),
                    ));
                }
                if matches!(f, Func::EncodeBase64 | Func::DecodeBase64) {
                    let scheme_ok = matches!(&args[1].kind, ExprKind::Lit(Lit::Str(s)) if s.eq_ignore_ascii_case("base64"));
                    if !scheme_ok {
                        return Err(self.err(
                            args[1].at,
                            "the encoding scheme must be the literal 'base64'",
                        ));
                    }
                    if f == Func::EncodeBase64 && args[0].kind == ExprKind::Star {
                        return Ok(CExpr::Call(Func::EncodePayloadBase64, Vec::new()));
                    }
                    return Ok(CExpr::Call(f, vec![self.expr(&args[0], clause, in_agg)?]));
                }
                let compiled = args
                    .iter()
                    .map(|a| self.expr(a, clause, in_agg))
                    .collect::<Result<Vec<_>, _>>()?;
                if f == Func::Topic {
                    if let [CExpr::Const(Value::Number(n))] = compiled.as_slice() {
                        if let Some(i) = n.as_i64().filter(|i| *i >= 1) {
                            return Ok(CExpr::TopicSegment((i - 1) as usize));
                        }
                    }
                }
                Ok(CExpr::Call(f, compiled))
            }
            Lookup::Aggregate(kind) => {
                if !(self.windowed && matches!(clause, Clause::Select | Clause::Having)) {
                    return Err(self.err(
                        at,
                        format!(
                            "aggregate {name}() is only allowed in the SELECT or HAVING of a rule with GROUP BY TUMBLINGWINDOW, HOPPINGWINDOW or COUNTWINDOW"
                        ),
                    ));
                }
                if in_agg {
                    return Err(self.err(at, "aggregates cannot be nested"));
                }
                let arg = match (kind, args) {
                    (AggKind::Count, [a]) if a.kind == ExprKind::Star => None,
                    (_, [a]) => Some(self.expr(a, clause, true)?),
                    _ => return Err(self.err(at, format!("{name}() takes 1 argument"))),
                };
                self.aggs.push(AggSpec { kind, arg });
                Ok(CExpr::Agg(self.aggs.len() - 1))
            }
            Lookup::Window => Err(self.err(at, format!("{name}() belongs in GROUP BY"))),
            Lookup::CloudOnly => Err(self.err(
                at,
                format!("{name}() needs the AWS cloud and is not available on a Grove gateway"),
            )),
            Lookup::Unsupported => {
                Err(self.err(at, format!("{name}() is not supported by Grove yet")))
            }
            Lookup::Unknown => Err(self.err(at, format!("unknown function {name}()"))),
        }
    }
}

/// Evaluates a compiled template expression against the original message.
pub(crate) fn eval_standalone<'a>(e: &'a CExpr, msg: &'a Message, ctx: &'a Context<'a>) -> Val<'a> {
    let env = Env::message(msg, ctx, &[]);
    e.eval(&env)
}
