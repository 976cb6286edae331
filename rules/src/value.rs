//! AWS IoT SQL's value model and its operators.
//!
//! The types are AWS's: Int, Decimal, Boolean, String, Array, Object, Null and **Undefined** (a missing
//! key, a function given bad arguments, an operator given the wrong types). Undefined is a value while a
//! rule runs and disappears when the output is built. Conversions and operator tables follow
//! <https://docs.aws.amazon.com/iot/latest/developerguide/iot-sql-data-types.html> and
//! <https://docs.aws.amazon.com/iot/latest/developerguide/iot-sql-operators.html>.
//!
//! Values borrow from the message (and from the compiled rule's constants) where they can, so that
//! `temp > 30` or `SELECT color` does not copy the payload; only the output is owned.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

use crate::ast::BinOp;

/// A value while a rule runs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val<'a> {
    /// Not a value: left out of the output.
    Undef,
    Null,
    Bool(bool),
    /// AWS Int; Grove holds it in an i64 (see the crate docs for the number model).
    Int(i64),
    /// AWS Decimal; Grove holds it in an f64.
    Dec(f64),
    Str(Cow<'a, str>),
    Arr(Cow<'a, [Value]>),
    Obj(Cow<'a, Map<String, Value>>),
}

/// A number after AWS's "convert to Decimal" step, keeping Int exact.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    Int(i64),
    Dec(f64),
}

impl Num {
    pub(crate) fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Dec(d) => d,
        }
    }

    pub(crate) fn into_val<'a>(self) -> Val<'a> {
        match self {
            Num::Int(i) => Val::Int(i),
            Num::Dec(d) => dec(d),
        }
    }
}

/// A Decimal result; NaN and infinities are not AWS values, so they become Undefined.
pub(crate) fn dec<'a>(d: f64) -> Val<'a> {
    if d.is_finite() {
        Val::Dec(d)
    } else {
        Val::Undef
    }
}

/// Converts a JSON number: integers that fit an i64 are Int, everything else Decimal.
fn num_of(n: &Number) -> Val<'static> {
    match n.as_i64() {
        Some(i) => Val::Int(i),
        None => n.as_f64().map_or(Val::Undef, dec),
    }
}

/// Is `s` a number by AWS's rule `^-?\d+(\.\d+)?((?i)E-?\d+)?$`? Written out by hand because it is
/// four character classes and the regex crate would be the crate's largest dependency for it.
fn is_aws_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    if b.first() == Some(&b'-') {
        i += 1;
    }
    if !digits(&mut i) {
        return false;
    }
    if i < b.len() && b[i] == b'.' {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && b[i] == b'-' {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == b.len()
}

/// Formats a Decimal the way JSON output shows it (shortest round-trip form, e.g. `2.5`, `10.0`).
pub(crate) fn fmt_dec(d: f64) -> String {
    Number::from_f64(d).map_or_else(|| d.to_string(), |n| n.to_string())
}

impl<'a> Val<'a> {
    /// A view of a JSON value, borrowing strings, arrays and objects.
    pub(crate) fn from_ref(v: &'a Value) -> Val<'a> {
        match v {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => num_of(n),
            Value::String(s) => Val::Str(Cow::Borrowed(s)),
            Value::Array(a) => Val::Arr(Cow::Borrowed(a)),
            Value::Object(o) => Val::Obj(Cow::Borrowed(o)),
        }
    }

    /// Takes ownership of a JSON value.
    pub(crate) fn from_owned(v: Value) -> Val<'a> {
        match v {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(b),
            Value::Number(n) => num_of(&n),
            Value::String(s) => Val::Str(Cow::Owned(s)),
            Value::Array(a) => Val::Arr(Cow::Owned(a)),
            Value::Object(o) => Val::Obj(Cow::Owned(o)),
        }
    }

    /// The JSON for this value, or `None` for Undefined (which the output leaves out).
    pub(crate) fn into_json(self) -> Option<Value> {
        Some(match self {
            Val::Undef => return None,
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(b),
            Val::Int(i) => Value::from(i),
            Val::Dec(d) => Value::Number(Number::from_f64(d)?),
            Val::Str(s) => Value::String(s.into_owned()),
            Val::Arr(a) => Value::Array(a.into_owned()),
            Val::Obj(o) => Value::Object(o.into_owned()),
        })
    }

    pub(crate) fn is_undef(&self) -> bool {
        matches!(self, Val::Undef)
    }

    /// `value.key`: the key of an object, Undefined for anything else.
    pub(crate) fn field(self, key: &str) -> Val<'a> {
        match self {
            Val::Obj(Cow::Borrowed(o)) => o.get(key).map_or(Val::Undef, Val::from_ref),
            Val::Obj(Cow::Owned(mut o)) => o.remove(key).map_or(Val::Undef, Val::from_owned),
            _ => Val::Undef,
        }
    }

    /// `get(value, index)` as AWS defines it: an array element or a string's character by an index
    /// converted to Int, or an object's value by a String key (no conversion).
    pub(crate) fn get(self, index: &Val<'_>) -> Val<'a> {
        match (self, index) {
            (Val::Obj(o), Val::Str(k)) => Val::Obj(o).field(k),
            (Val::Arr(a), idx) => {
                let Some(i) = idx.to_int().and_then(|i| usize::try_from(i).ok()) else {
                    return Val::Undef;
                };
                match a {
                    Cow::Borrowed(a) => a.get(i).map_or(Val::Undef, Val::from_ref),
                    Cow::Owned(mut a) if i < a.len() => Val::from_owned(a.swap_remove(i)),
                    Cow::Owned(_) => Val::Undef,
                }
            }
            (Val::Str(s), idx) => {
                let Some(i) = idx.to_int().and_then(|i| usize::try_from(i).ok()) else {
                    return Val::Undef;
                };
                s.chars()
                    .nth(i)
                    .map_or(Val::Undef, |c| Val::Str(Cow::Owned(c.to_string())))
            }
            _ => Val::Undef,
        }
    }

    /// AWS's "convert to Decimal" for operators and numeric functions: Int and Decimal as they are,
    /// numeric strings parsed (as Decimal), everything else fails.
    pub(crate) fn to_num(&self) -> Option<Num> {
        match self {
            Val::Int(i) => Some(Num::Int(*i)),
            Val::Dec(d) => Some(Num::Dec(*d)),
            Val::Str(s) if is_aws_number(s) => s.parse::<f64>().ok().map(Num::Dec),
            _ => None,
        }
    }

    /// AWS's "convert to Int" for function arguments such as indexes and lengths: Decimals are rounded
    /// down, as the functions page says for `substring`, `lpad` and the bit functions.
    pub(crate) fn to_int(&self) -> Option<i64> {
        match self.to_num()? {
            Num::Int(i) => Some(i),
            Num::Dec(d) => {
                let f = d.floor();
                // Saturate far-out values (substring(false, -2.411E247) is a documented example).
                Some(if f >= i64::MAX as f64 {
                    i64::MAX
                } else if f <= i64::MIN as f64 {
                    i64::MIN
                } else {
                    f as i64
                })
            }
        }
    }

    /// AWS's "convert to Boolean": booleans, and the strings "true"/"false" in any case.
    pub(crate) fn to_bool(&self) -> Option<bool> {
        match self {
            Val::Bool(b) => Some(*b),
            Val::Str(s) if s.eq_ignore_ascii_case("true") => Some(true),
            Val::Str(s) if s.eq_ignore_ascii_case("false") => Some(false),
            _ => None,
        }
    }

    /// AWS's "convert to String": Null and Undefined have no string form; arrays and objects are
    /// serialised as JSON.
    pub(crate) fn to_str(&self) -> Option<Cow<'_, str>> {
        Some(match self {
            Val::Undef | Val::Null => return None,
            Val::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            Val::Int(i) => Cow::Owned(i.to_string()),
            Val::Dec(d) => Cow::Owned(fmt_dec(*d)),
            Val::Str(s) => Cow::Borrowed(s.as_ref()),
            Val::Arr(a) => Cow::Owned(Value::Array(a.to_vec()).to_string()),
            Val::Obj(o) => Cow::Owned(serde_json::to_string(o.as_ref()).unwrap_or_default()),
        })
    }

    /// Like [`Val::to_str`] but owning, for results.
    pub(crate) fn to_string_val(&self) -> Option<String> {
        self.to_str().map(Cow::into_owned)
    }
}

/// AWS `=`: Undefined on either side gives Undefined; mismatched types are simply unequal; Int and
/// Decimal compare by value; arrays compare in order and objects regardless of key order.
pub(crate) fn sql_eq(a: &Val<'_>, b: &Val<'_>) -> Option<bool> {
    Some(match (a, b) {
        (Val::Undef, _) | (_, Val::Undef) => return None,
        (Val::Int(x), Val::Int(y)) => x == y,
        (Val::Int(_) | Val::Dec(_), Val::Int(_) | Val::Dec(_)) => {
            a.to_num().map(Num::as_f64) == b.to_num().map(Num::as_f64)
        }
        (Val::Str(x), Val::Str(y)) => x == y,
        (Val::Bool(x), Val::Bool(y)) => x == y,
        (Val::Null, Val::Null) => true,
        (Val::Arr(x), Val::Arr(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| json_eq(p, q))
        }
        (Val::Obj(x), Val::Obj(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => false,
    })
}

fn json_eq(a: &Value, b: &Value) -> bool {
    sql_eq(&Val::from_ref(a), &Val::from_ref(b)) == Some(true)
}

/// AWS's ordering operators: both sides converted to Decimal (numeric strings included), otherwise
/// Undefined. Two Ints compare exactly.
pub(crate) fn sql_cmp(a: &Val<'_>, b: &Val<'_>) -> Option<Ordering> {
    match (a.to_num()?, b.to_num()?) {
        (Num::Int(x), Num::Int(y)) => Some(x.cmp(&y)),
        (x, y) => x.as_f64().partial_cmp(&y.as_f64()),
    }
}

/// Arithmetic on converted numbers: Int op Int stays Int (falling back to Decimal on i64 overflow,
/// where AWS's 34-digit Int would still be exact), anything with a Decimal is Decimal.
fn arith<'a>(op: BinOp, x: Num, y: Num) -> Val<'a> {
    if let (Num::Int(a), Num::Int(b)) = (x, y) {
        let exact = match op {
            BinOp::Add => a.checked_add(b),
            BinOp::Sub => a.checked_sub(b),
            BinOp::Mul => a.checked_mul(b),
            // Division by zero has no AWS value; Grove gives Undefined.
            BinOp::Div if b == 0 => return Val::Undef,
            BinOp::Div => a.checked_div(b),
            BinOp::Mod if b == 0 => return Val::Undef,
            BinOp::Mod => a.checked_rem(b),
            _ => return Val::Undef,
        };
        if let Some(r) = exact {
            return Val::Int(r);
        }
    }
    let (a, b) = (x.as_f64(), y.as_f64());
    match op {
        BinOp::Add => dec(a + b),
        BinOp::Sub => dec(a - b),
        BinOp::Mul => dec(a * b),
        BinOp::Div if b == 0.0 => Val::Undef,
        BinOp::Div => dec(a / b),
        BinOp::Mod if b == 0.0 => Val::Undef,
        BinOp::Mod => dec(a % b),
        _ => Val::Undef,
    }
}

/// Numeric operands for `-`, `*`, `/`, `%`: Int and Decimal as they are; if a string is involved, AWS
/// converts to Decimal and returns a Decimal.
fn numeric_operands(a: &Val<'_>, b: &Val<'_>) -> Option<(Num, Num)> {
    let (x, y) = (a.to_num()?, b.to_num()?);
    if matches!(a, Val::Str(_)) || matches!(b, Val::Str(_)) {
        Some((Num::Dec(x.as_f64()), Num::Dec(y.as_f64())))
    } else {
        Some((x, y))
    }
}

/// Applies a binary operator with AWS's type table.
pub(crate) fn binary<'a>(op: BinOp, a: Val<'a>, b: Val<'a>) -> Val<'a> {
    match op {
        BinOp::And | BinOp::Or => match (a.to_bool(), b.to_bool()) {
            (Some(x), Some(y)) => Val::Bool(if op == BinOp::And { x && y } else { x || y }),
            _ => Val::Undef,
        },
        BinOp::Eq => sql_eq(&a, &b).map_or(Val::Undef, Val::Bool),
        BinOp::Ne => sql_eq(&a, &b).map_or(Val::Undef, |e| Val::Bool(!e)),
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => match sql_cmp(&a, &b) {
            Some(ord) => Val::Bool(match op {
                BinOp::Lt => ord == Ordering::Less,
                BinOp::Le => ord != Ordering::Greater,
                BinOp::Gt => ord == Ordering::Greater,
                _ => ord != Ordering::Less,
            }),
            None => Val::Undef,
        },
        BinOp::Add if matches!(a, Val::Str(_)) || matches!(b, Val::Str(_)) => {
            match (a.to_str(), b.to_str()) {
                (Some(x), Some(y)) => Val::Str(Cow::Owned(format!("{x}{y}"))),
                _ => Val::Undef,
            }
        }
        BinOp::Add => match (&a, &b) {
            (Val::Int(_) | Val::Dec(_), Val::Int(_) | Val::Dec(_)) => {
                match (a.to_num(), b.to_num()) {
                    (Some(x), Some(y)) => arith(op, x, y),
                    _ => Val::Undef,
                }
            }
            _ => Val::Undef,
        },
        BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Mod => {
            numeric_operands(&a, &b).map_or(Val::Undef, |(x, y)| arith(op, x, y))
        }
    }
}

/// Unary minus: numbers and numeric strings (as Decimal).
pub(crate) fn negate(a: Val<'_>) -> Val<'_> {
    match a {
        Val::Int(i) => i.checked_neg().map_or(Val::Dec(-(i as f64)), Val::Int),
        Val::Dec(d) => Val::Dec(-d),
        Val::Str(_) => a.to_num().map_or(Val::Undef, |n| dec(-n.as_f64())),
        _ => Val::Undef,
    }
}

/// `NOT`: a Boolean or a "true"/"false" string, otherwise Undefined.
pub(crate) fn not(a: Val<'_>) -> Val<'_> {
    a.to_bool().map_or(Val::Undef, |b| Val::Bool(!b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_number_strings() {
        for (s, ok) in [
            ("0", true),
            ("-1.2", true),
            ("5E-12", true),
            ("5e3", true),
            ("1.", false),
            (".5", false),
            ("+1", false),
            ("1e", false),
            ("", false),
            ("- 1", false),
            ("0x10", false),
            ("NaN", false),
        ] {
            assert_eq!(is_aws_number(s), ok, "{s:?}");
        }
    }
}
