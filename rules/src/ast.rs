//! The syntax tree the parser produces, and a printer that writes it back as SQL.
//!
//! The tree is close to the text (names are still strings, every node keeps its source offset for
//! error messages); [`crate::compile`] resolves it into the form that runs. The printer exists so that
//! `parse(print(tree))` can be checked as a law (see the property tests) and so that tools can show a
//! normalised rule.

use std::fmt;

/// A literal written in the SQL text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Lit {
    Null,
    Bool(bool),
    Int(i64),
    Dec(f64),
    Str(String),
}

/// Unary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnOp {
    Neg,
    Not,
}

/// Binary operators, in AWS's operator table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

impl BinOp {
    /// The operator's SQL spelling.
    pub(crate) fn text(self) -> &'static str {
        match self {
            BinOp::Or => "OR",
            BinOp::And => "AND",
            BinOp::Eq => "=",
            BinOp::Ne => "<>",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
        }
    }
}

/// An expression node with the byte offset where it starts (for error messages).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Expr {
    pub(crate) kind: ExprKind,
    pub(crate) at: usize,
}

/// The expression forms of the dialect.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ExprKind {
    Lit(Lit),
    /// A top-level key of the payload, e.g. `temp`.
    Ident(String),
    /// A `SET` variable, `@name`.
    Var(String),
    /// `*` as a function argument (`encode(*, 'base64')`, `count(*)`): the whole payload.
    Star,
    /// `expr.key`
    Field(Box<Expr>, String),
    /// `expr[index]` (Grove extension; `get(expr, index)` is the AWS spelling).
    Index(Box<Expr>, Box<Expr>),
    /// `name(args)`; the name keeps its spelling, lookup is case-insensitive.
    Call(String, Vec<Expr>),
    /// `cast(expr AS type)`
    Cast(Box<Expr>, String),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `CASE [operand] WHEN .. THEN .. [ELSE ..] END`; without an operand each WHEN is a condition.
    Case {
        operand: Option<Box<Expr>>,
        whens: Vec<(Expr, Expr)>,
        otherwise: Option<Box<Expr>>,
    },
    Array(Vec<Expr>),
    Object(Vec<(String, Expr)>),
}

/// One item of the SELECT list.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SelectItem {
    /// `*`: every key of the payload.
    Star,
    /// An expression with an optional (possibly dotted) alias.
    Expr {
        expr: Expr,
        alias: Option<Vec<String>>,
    },
}

/// A whole rule statement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Statement {
    /// `SET @name = expr, ...` before SELECT: (name, expression, offset of the `@`).
    pub(crate) sets: Vec<(String, Expr, usize)>,
    /// `SELECT VALUE`: output the single item's value itself rather than an object.
    pub(crate) value: bool,
    pub(crate) items: Vec<SelectItem>,
    /// Offset of the SELECT list, for errors about it as a whole.
    pub(crate) items_at: usize,
    pub(crate) from: String,
    pub(crate) from_at: usize,
    pub(crate) where_: Option<Expr>,
    pub(crate) group_by: Vec<Expr>,
    pub(crate) having: Option<Expr>,
}

/// Words that end an expression or start a clause, so they cannot be bare identifiers.
pub(crate) const RESERVED: &[&str] = &[
    "select", "value", "from", "where", "group", "by", "having", "as", "and", "or", "not", "case",
    "when", "then", "else", "end", "null", "true", "false",
];

fn write_name(f: &mut fmt::Formatter<'_>, name: &str) -> fmt::Result {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !RESERVED.contains(&name.to_ascii_lowercase().as_str());
    if plain {
        f.write_str(name)
    } else {
        write!(f, "`{}`", name.replace('\\', "\\\\").replace('`', "``"))
    }
}

fn write_str_lit(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    write!(f, "'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

impl fmt::Display for Expr {
    /// Prints fully parenthesised SQL, so precedence never depends on the printer getting it right.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ExprKind::Lit(Lit::Null) => f.write_str("NULL"),
            ExprKind::Lit(Lit::Bool(b)) => write!(f, "{b}"),
            ExprKind::Lit(Lit::Int(i)) if *i < 0 => write!(f, "({i})"),
            ExprKind::Lit(Lit::Int(i)) => write!(f, "{i}"),
            ExprKind::Lit(Lit::Dec(d)) if *d < 0.0 => write!(f, "({d:?})"),
            ExprKind::Lit(Lit::Dec(d)) => write!(f, "{d:?}"),
            ExprKind::Lit(Lit::Str(s)) => write_str_lit(f, s),
            ExprKind::Ident(name) => write_name(f, name),
            ExprKind::Var(name) => write!(f, "@{name}"),
            ExprKind::Star => f.write_str("*"),
            ExprKind::Field(base, key) => {
                write!(f, "({base}).")?;
                write_name(f, key)
            }
            ExprKind::Index(base, index) => write!(f, "({base})[{index}]"),
            ExprKind::Call(name, args) => {
                write!(f, "{name}(")?;
                for (i, arg) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{arg}")?;
                }
                f.write_str(")")
            }
            ExprKind::Cast(e, ty) => write!(f, "cast({e} AS {ty})"),
            ExprKind::Unary(UnOp::Neg, e) => write!(f, "(-{e})"),
            ExprKind::Unary(UnOp::Not, e) => write!(f, "(NOT {e})"),
            ExprKind::Binary(op, l, r) => write!(f, "({l} {} {r})", op.text()),
            ExprKind::Case {
                operand,
                whens,
                otherwise,
            } => {
                f.write_str("CASE")?;
                if let Some(op) = operand {
                    write!(f, " {op}")?;
                }
                for (w, t) in whens {
                    write!(f, " WHEN {w} THEN {t}")?;
                }
                if let Some(e) = otherwise {
                    write!(f, " ELSE {e}")?;
                }
                f.write_str(" END")
            }
            ExprKind::Array(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            ExprKind::Object(pairs) => {
                f.write_str("{")?;
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write_str_lit(f, k)?;
                    write!(f, ": {v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

impl fmt::Display for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, expr, _)) in self.sets.iter().enumerate() {
            f.write_str(if i == 0 { "SET " } else { ", " })?;
            write!(f, "@{name} = {expr}")?;
        }
        if !self.sets.is_empty() {
            f.write_str(" ")?;
        }
        f.write_str("SELECT ")?;
        if self.value {
            f.write_str("VALUE ")?;
        }
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match item {
                SelectItem::Star => f.write_str("*")?,
                SelectItem::Expr { expr, alias } => {
                    write!(f, "{expr}")?;
                    if let Some(path) = alias {
                        f.write_str(" AS ")?;
                        for (j, part) in path.iter().enumerate() {
                            if j > 0 {
                                f.write_str(".")?;
                            }
                            write_name(f, part)?;
                        }
                    }
                }
            }
        }
        f.write_str(" FROM ")?;
        write_str_lit(f, &self.from)?;
        if let Some(w) = &self.where_ {
            write!(f, " WHERE {w}")?;
        }
        for (i, g) in self.group_by.iter().enumerate() {
            f.write_str(if i == 0 { " GROUP BY " } else { ", " })?;
            write!(f, "{g}")?;
        }
        if let Some(h) = &self.having {
            write!(f, " HAVING {h}")?;
        }
        Ok(())
    }
}
