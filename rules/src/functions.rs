//! The built-in functions: their names, arities, and what they compute.
//!
//! Semantics follow AWS's function reference,
//! <https://docs.aws.amazon.com/iot/latest/developerguide/iot-sql-functions.html>: arguments of the
//! wrong type are converted with the standard conversions, and anything that still does not fit gives
//! Undefined rather than an error. Names are case-insensitive (`Round`, `Nanvl` appear in AWS's own
//! examples). Functions that need AWS itself (`aws_lambda`, `get_dynamodb`, ...) are rejected when the
//! rule is compiled, as are the AWS functions Grove does not implement yet, each with its own message.

use std::borrow::Cow;

use base64::Engine as _;

use crate::ast::BinOp;
use crate::eval::Env;
use crate::time;
use crate::value::{binary, dec, Num, Val};

/// A resolved function. Aggregates and window functions are handled by the compiler, not here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Topic,
    ClientId,
    Timestamp,
    NewUuid,
    SqlVersion,
    WindowStart,
    WindowEnd,
    Abs,
    Ceil,
    Floor,
    Round,
    Trunc,
    Mod,
    Power,
    Sqrt,
    Sign,
    Exp,
    Ln,
    Log,
    Sin,
    Cos,
    Tan,
    Asin,
    Acos,
    Atan,
    Atan2,
    Sinh,
    Cosh,
    Tanh,
    BitAnd,
    BitOr,
    BitXor,
    BitNot,
    Lower,
    Upper,
    Concat,
    Substring,
    Length,
    Trim,
    Ltrim,
    Rtrim,
    Lpad,
    Rpad,
    StartsWith,
    EndsWith,
    Replace,
    IndexOf,
    Chr,
    NumBytes,
    IsNull,
    IsUndefined,
    Get,
    /// `encode(expr, 'base64')`: the expression converted to a string, then encoded.
    EncodeBase64,
    /// `encode(*, 'base64')`: the raw payload bytes, JSON or not.
    EncodePayloadBase64,
    DecodeBase64,
    ParseTime,
    Nanvl,
}

/// What a name resolves to.
pub(crate) enum Lookup {
    /// A function Grove runs, with its (min, max) number of arguments (`usize::MAX` for any).
    Func(Func, usize, usize),
    /// An aggregate (`avg min max sum count`), for windowed rules.
    Aggregate(AggKind),
    /// A window function, only valid in GROUP BY.
    Window,
    /// A function that needs the AWS cloud; the message says so.
    CloudOnly,
    /// An AWS function Grove does not implement.
    Unsupported,
    Unknown,
}

/// The aggregate functions of windowed rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AggKind {
    Avg,
    Min,
    Max,
    Sum,
    Count,
}

/// Resolves a function name, case-insensitively.
pub(crate) fn lookup(name: &str) -> Lookup {
    use Func::*;
    let lower = name.to_ascii_lowercase();
    let (f, min, max) = match lower.as_str() {
        "topic" => (Topic, 0, 1),
        "clientid" => (ClientId, 0, 0),
        "timestamp" => (Timestamp, 0, 0),
        "newuuid" => (NewUuid, 0, 0),
        "sql_version" => (SqlVersion, 0, 0),
        "window_start" => (WindowStart, 0, 0),
        "window_end" => (WindowEnd, 0, 0),
        "abs" => (Abs, 1, 1),
        "ceil" => (Ceil, 1, 1),
        "floor" => (Floor, 1, 1),
        "round" => (Round, 1, 1),
        "trunc" => (Trunc, 2, 2),
        "mod" | "remainder" => (Mod, 2, 2),
        "power" => (Power, 2, 2),
        "sqrt" => (Sqrt, 1, 1),
        "sign" => (Sign, 1, 1),
        "exp" => (Exp, 1, 1),
        "ln" => (Ln, 1, 1),
        "log" => (Log, 1, 1),
        "sin" => (Sin, 1, 1),
        "cos" => (Cos, 1, 1),
        "tan" => (Tan, 1, 1),
        "asin" => (Asin, 1, 1),
        "acos" => (Acos, 1, 1),
        "atan" => (Atan, 1, 1),
        "atan2" => (Atan2, 2, 2),
        "sinh" => (Sinh, 1, 1),
        "cosh" => (Cosh, 1, 1),
        "tanh" => (Tanh, 1, 1),
        "bitand" => (BitAnd, 2, 2),
        "bitor" => (BitOr, 2, 2),
        "bitxor" => (BitXor, 2, 2),
        "bitnot" => (BitNot, 1, 1),
        "lower" => (Lower, 1, 1),
        "upper" => (Upper, 1, 1),
        "concat" => (Concat, 0, usize::MAX),
        "substring" => (Substring, 2, 3),
        "length" => (Length, 1, 1),
        "trim" => (Trim, 1, 1),
        "ltrim" => (Ltrim, 1, 1),
        "rtrim" => (Rtrim, 1, 1),
        "lpad" => (Lpad, 2, 2),
        "rpad" => (Rpad, 2, 2),
        "startswith" => (StartsWith, 2, 2),
        "endswith" => (EndsWith, 2, 2),
        "replace" => (Replace, 3, 3),
        "indexof" => (IndexOf, 2, 2),
        "chr" => (Chr, 1, 1),
        "numbytes" => (NumBytes, 1, 1),
        "isnull" => (IsNull, 1, 1),
        "isundefined" => (IsUndefined, 1, 1),
        "get" => (Get, 2, 2),
        "encode" => (EncodeBase64, 2, 2),
        "decode" => (DecodeBase64, 2, 2),
        "parse_time" => (ParseTime, 2, 3),
        "nanvl" => (Nanvl, 2, 2),
        "avg" => return Lookup::Aggregate(AggKind::Avg),
        "min" => return Lookup::Aggregate(AggKind::Min),
        "max" => return Lookup::Aggregate(AggKind::Max),
        "sum" => return Lookup::Aggregate(AggKind::Sum),
        "count" => return Lookup::Aggregate(AggKind::Count),
        "tumblingwindow" | "hoppingwindow" | "countwindow" | "slidingwindow" | "sessionwindow" => {
            return Lookup::Window
        }
        "aws_lambda"
        | "get_dynamodb"
        | "get_thing_shadow"
        | "get_secret"
        | "machinelearning_predict"
        | "get_registry_data"
        | "accountid"
        | "principal"
        | "traceid"
        | "get_mqtt_property"
        | "get_user_properties" => return Lookup::CloudOnly,
        "regexp_matches" | "regexp_replace" | "regexp_substr" | "md2" | "md5" | "sha1"
        | "sha224" | "sha256" | "sha384" | "sha512" | "rand" | "transform" | "time_to_epoch"
        | "get_or_default" => return Lookup::Unsupported,
        _ => return Lookup::Unknown,
    };
    Lookup::Func(f, min, max)
}

/// Trims what Java's `String.trim` trims (every char up to U+0020), which is what AWS runs.
fn is_trimmed(c: char) -> bool {
    c <= ' '
}

fn owned<'a>(s: String) -> Val<'a> {
    Val::Str(Cow::Owned(s))
}

/// A one-argument function of a double ("Decimal arguments are rounded to double precision").
fn float1<'a>(a: &Val<'_>, f: fn(f64) -> f64) -> Val<'a> {
    a.to_num().map_or(Val::Undef, |n| dec(f(n.as_f64())))
}

/// An f64 that is a whole number, as an Int when it fits (AWS returns Int from ceil/floor/round).
fn whole<'a>(f: f64) -> Val<'a> {
    if f.is_finite() && f.abs() < 9.0e18 {
        Val::Int(f as i64)
    } else {
        dec(f)
    }
}

/// `trunc(x, places)`: cuts the decimal text rather than multiplying, so that `trunc(0.29, 2)` is
/// `0.29` and not the `0.28` that `0.29 * 100 = 28.999...` would give.
fn trunc<'a>(x: Num, places: i64) -> Val<'a> {
    let d = match x {
        Num::Int(i) => return Val::Int(i),
        Num::Dec(d) => d,
    };
    let places = places.clamp(0, 34) as usize;
    // `Display` for f64 prints the shortest round-trip digits and never uses an exponent.
    let text = format!("{d}");
    let cut = match text.split_once('.') {
        Some((int, frac)) => {
            let frac = frac[..frac.len().min(places)].trim_end_matches('0');
            if frac.is_empty() {
                int.to_string()
            } else {
                format!("{int}.{frac}")
            }
        }
        None => text,
    };
    if !cut.contains('.') {
        if let Ok(i) = cut.parse::<i64>() {
            return Val::Int(i);
        }
    }
    cut.parse::<f64>().map_or(Val::Undef, dec)
}

fn bits<'a>(a: &Val<'_>, b: &Val<'_>, f: fn(i64, i64) -> i64) -> Val<'a> {
    match (a.to_int(), b.to_int()) {
        (Some(x), Some(y)) => Val::Int(f(x, y)),
        _ => Val::Undef,
    }
}

/// `lpad`/`rpad`: `join` puts the string and the spaces (0 to 1000 of them, as AWS clamps) together.
fn pad<'a>(s: &Val<'_>, n: &Val<'_>, join: fn(&str, &str) -> String) -> Val<'a> {
    let (Some(s), Some(n)) = (s.to_str(), n.to_int()) else {
        return Val::Undef;
    };
    owned(join(&s, &" ".repeat(n.clamp(0, 1000) as usize)))
}

fn concat<'a>(args: Vec<Val<'a>>) -> Val<'a> {
    match args.len() {
        0 => Val::Undef,
        1 => args.into_iter().next().unwrap_or(Val::Undef),
        _ if args.iter().any(|a| matches!(a, Val::Arr(_))) => {
            let mut out = Vec::new();
            for a in args {
                match a {
                    Val::Arr(items) => out.extend(items.into_owned()),
                    other => out.extend(other.into_json()),
                }
            }
            Val::Arr(Cow::Owned(out))
        }
        _ if args.iter().any(|a| matches!(a, Val::Str(_))) => {
            let mut out = String::new();
            for a in &args {
                match a.to_str() {
                    Some(s) => out.push_str(&s),
                    None => return Val::Undef,
                }
            }
            owned(out)
        }
        _ => Val::Undef,
    }
}

fn substring<'a>(args: &[Val<'_>]) -> Val<'a> {
    let Some(s) = args[0].to_str() else {
        return Val::Undef;
    };
    let len = s.chars().count() as i64;
    let Some(start) = args[1].to_int() else {
        return Val::Undef;
    };
    let end = match args.get(2) {
        Some(e) => match e.to_int() {
            Some(e) => e,
            None => return Val::Undef,
        },
        None => len,
    };
    let (start, end) = (start.clamp(0, len), end.clamp(0, len));
    if start >= end {
        return owned(String::new());
    }
    owned(
        s.chars()
            .skip(start as usize)
            .take((end - start) as usize)
            .collect(),
    )
}

fn decode_base64<'a>(v: &Val<'_>) -> Val<'a> {
    let Some(text) = v.to_str() else {
        return Val::Undef;
    };
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(text.as_bytes()) else {
        return Val::Null;
    };
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) {
        return Val::from_owned(json);
    }
    String::from_utf8(bytes).map_or(Val::Null, owned)
}

/// Calls `f` on evaluated arguments (whose count the compiler has checked).
pub(crate) fn call<'a>(f: Func, mut args: Vec<Val<'a>>, env: &Env<'a, '_>) -> Val<'a> {
    use Func::*;
    let arg = |i: usize| args.get(i).unwrap_or(&Val::Undef);
    match f {
        Topic => match args.first() {
            None => Val::Str(Cow::Borrowed(env.msg.topic())),
            Some(n) => match n.to_int() {
                Some(n) if n >= 1 => env
                    .msg
                    .topic()
                    .split('/')
                    .nth((n - 1) as usize)
                    .map_or(Val::Undef, |s| Val::Str(Cow::Borrowed(s))),
                _ => Val::Undef,
            },
        },
        ClientId => Val::Str(Cow::Borrowed(env.msg.client_id())),
        Timestamp => Val::Int(env.ctx.now_ms),
        NewUuid => owned(env.ctx.uuids.new_uuid()),
        SqlVersion => Val::Str(Cow::Borrowed("2016-03-23")),
        WindowStart => env.window.map_or(Val::Undef, |(s, _)| Val::Int(s)),
        WindowEnd => env.window.map_or(Val::Undef, |(_, e)| Val::Int(e)),
        Abs => match arg(0).to_num() {
            Some(Num::Int(i)) => i.checked_abs().map_or(dec((i as f64).abs()), Val::Int),
            Some(Num::Dec(d)) => dec(d.abs()),
            None => Val::Undef,
        },
        Ceil | Floor | Round => match arg(0).to_num() {
            Some(Num::Int(i)) => Val::Int(i),
            Some(Num::Dec(d)) => whole(match f {
                Ceil => d.ceil(),
                Floor => d.floor(),
                // f64::round rounds halves away from zero: Round(-1.5) = -2, as AWS documents.
                _ => d.round(),
            }),
            None => Val::Undef,
        },
        Trunc => match (arg(0).to_num(), arg(1).to_int()) {
            (Some(x), Some(p)) => trunc(x, p),
            _ => Val::Undef,
        },
        Mod => {
            let b = args.pop().unwrap_or(Val::Undef);
            let a = args.pop().unwrap_or(Val::Undef);
            binary(BinOp::Mod, a, b)
        }
        Power => match (arg(0).to_num(), arg(1).to_num()) {
            (Some(a), Some(b)) => dec(a.as_f64().powf(b.as_f64())),
            _ => Val::Undef,
        },
        Sqrt => float1(arg(0), f64::sqrt),
        Sign => match arg(0).to_num() {
            Some(Num::Int(i)) => Val::Int(i.signum()),
            Some(Num::Dec(d)) => Val::Int(if d > 0.0 {
                1
            } else if d < 0.0 {
                -1
            } else {
                0
            }),
            None => Val::Undef,
        },
        Exp => float1(arg(0), f64::exp),
        Ln => float1(arg(0), f64::ln),
        Log => float1(arg(0), f64::log10),
        Sin => float1(arg(0), f64::sin),
        Cos => float1(arg(0), f64::cos),
        Tan => float1(arg(0), f64::tan),
        Asin => float1(arg(0), f64::asin),
        Acos => float1(arg(0), f64::acos),
        Atan => float1(arg(0), f64::atan),
        Atan2 => match (arg(0).to_num(), arg(1).to_num()) {
            (Some(y), Some(x)) => dec(y.as_f64().atan2(x.as_f64())),
            _ => Val::Undef,
        },
        Sinh => float1(arg(0), f64::sinh),
        Cosh => float1(arg(0), f64::cosh),
        Tanh => float1(arg(0), f64::tanh),
        BitAnd => bits(arg(0), arg(1), |a, b| a & b),
        BitOr => bits(arg(0), arg(1), |a, b| a | b),
        BitXor => bits(arg(0), arg(1), |a, b| a ^ b),
        BitNot => arg(0).to_int().map_or(Val::Undef, |i| Val::Int(!i)),
        Lower => arg(0)
            .to_str()
            .map_or(Val::Undef, |s| owned(s.to_lowercase())),
        Upper => arg(0)
            .to_str()
            .map_or(Val::Undef, |s| owned(s.to_uppercase())),
        Concat => concat(args),
        Substring => substring(&args),
        Length => arg(0)
            .to_str()
            .map_or(Val::Undef, |s| Val::Int(s.chars().count() as i64)),
        Trim => arg(0).to_str().map_or(Val::Undef, |s| {
            owned(s.trim_matches(is_trimmed).to_string())
        }),
        Ltrim => arg(0).to_str().map_or(Val::Undef, |s| {
            owned(s.trim_start_matches(is_trimmed).to_string())
        }),
        Rtrim => arg(0).to_str().map_or(Val::Undef, |s| {
            owned(s.trim_end_matches(is_trimmed).to_string())
        }),
        Lpad => pad(arg(0), arg(1), |s, spaces| format!("{spaces}{s}")),
        Rpad => pad(arg(0), arg(1), |s, spaces| format!("{s}{spaces}")),
        StartsWith | EndsWith => match (arg(0).to_str(), arg(1).to_str()) {
            (Some(s), Some(p)) => Val::Bool(if f == StartsWith {
                s.starts_with(p.as_ref())
            } else {
                s.ends_with(p.as_ref())
            }),
            _ => Val::Undef,
        },
        Replace => match (arg(0).to_str(), arg(1).to_str(), arg(2).to_str()) {
            (Some(s), Some(from), Some(to)) => owned(s.replace(from.as_ref(), &to)),
            _ => Val::Undef,
        },
        IndexOf => match (arg(0).to_str(), arg(1).to_str()) {
            (Some(s), Some(sub)) => Val::Int(
                s.find(sub.as_ref())
                    .map_or(-1, |byte| s[..byte].chars().count() as i64),
            ),
            _ => Val::Undef,
        },
        Chr => match arg(0).to_int() {
            Some(i @ 0..=127) => owned(char::from(i as u8).to_string()),
            _ => Val::Undef,
        },
        NumBytes => arg(0)
            .to_str()
            .map_or(Val::Undef, |s| Val::Int(s.len() as i64)),
        IsNull => Val::Bool(matches!(arg(0), Val::Null)),
        IsUndefined => Val::Bool(arg(0).is_undef()),
        Get => {
            let index = args.pop().unwrap_or(Val::Undef);
            let base = args.pop().unwrap_or(Val::Undef);
            base.get(&index)
        }
        EncodeBase64 => arg(0).to_str().map_or(Val::Undef, |s| {
            owned(base64::engine::general_purpose::STANDARD.encode(s.as_bytes()))
        }),
        EncodePayloadBase64 => {
            owned(base64::engine::general_purpose::STANDARD.encode(env.msg.payload()))
        }
        DecodeBase64 => decode_base64(arg(0)),
        ParseTime => {
            let (Some(pattern), Some(ms)) = (arg(0).to_str(), arg(1).to_int()) else {
                return Val::Undef;
            };
            let zone = match args.get(2) {
                Some(z) => match z.to_str() {
                    Some(z) => z.into_owned(),
                    None => return Val::Undef,
                },
                None => "UTC".to_string(),
            };
            time::format(&pattern, ms, &zone).map_or(Val::Undef, owned)
        }
        Nanvl => match args.first() {
            Some(Val::Undef | Val::Null) | None => args.pop().unwrap_or(Val::Undef),
            Some(Val::Dec(d)) if d.is_nan() => args.pop().unwrap_or(Val::Undef),
            Some(_) => args.swap_remove(0),
        },
    }
}
