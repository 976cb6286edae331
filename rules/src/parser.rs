//! A hand-written recursive-descent parser for the AWS IoT SQL dialect (2016-03-23) plus Grove's
//! window clauses.
//!
//! Why by hand rather than with chumsky, winnow or nom: the grammar is small (one statement, a dozen
//! precedence levels), the error messages must say exactly what was expected at a given line and column,
//! and AWS's quirks (keywords usable as JSON keys in backticks, `*` meaning different things by position,
//! `${...}` templates that end at a `}` inside a larger string) are each a line or two here but a fight
//! with a combinator library's error and input types. It also keeps the crate free of a large build
//! dependency on a machine where compile time is shared.
//!
//! Grammar (lowest precedence first), see
//! <https://docs.aws.amazon.com/iot/latest/developerguide/iot-sql-reference.html>:
//!
//! ```text
//! statement := SELECT [VALUE] item {, item} FROM string [WHERE expr]
//!              [GROUP BY expr {, expr}] [HAVING expr] [;]
//! item      := * | expr [AS name {. name}]
//! expr      := or ;  or := and {OR and} ; and := not {AND not} ; not := NOT not | cmp
//! cmp       := add {(= | <> | != | < | <= | > | >=) add}
//! add       := mul {(+ | -) mul} ; mul := unary {(* | / | %) unary} ; unary := - unary | postfix
//! postfix   := primary {. name | [ expr ]}
//! primary   := literal | name | name ( [args] ) | cast ( expr AS type ) | ( expr )
//!            | [ [expr {, expr}] ] | { [key : expr {, key : expr}] } | CASE ... END
//! ```

use crate::ast::{BinOp, Expr, ExprKind, Lit, SelectItem, Statement, UnOp, RESERVED};
use crate::error::CompileError;
use crate::lexer::{Lexer, Tok, Token};

/// How deep an expression tree may be. Parentheses, unary operators and each link of a chain such as
/// `a + b + c` or `x.a.b` count one level. Deeper input is rejected with an error, because the
/// compiler, the evaluator and even dropping the tree recurse over it and must not overflow the stack
/// on untrusted text.
const MAX_DEPTH: usize = 128;

/// How deeply the parser itself may recurse (parentheses, literals, arguments, unary operators). Each
/// level costs the parser about ten stack frames, hence a tighter bound than [`MAX_DEPTH`].
const MAX_NESTING: usize = 32;

pub(crate) struct Parser<'s> {
    src: &'s str,
    lexer: Lexer<'s>,
    cur: Token,
    /// The depth of the tree being built (see [`MAX_DEPTH`]).
    depth: usize,
    /// The parser's own recursion depth (see [`MAX_NESTING`]).
    nesting: usize,
}

/// Parses a whole rule statement.
pub(crate) fn parse_statement(src: &str) -> Result<Statement, CompileError> {
    let mut p = Parser::new(src, 0)?;
    let stmt = p.statement()?;
    if p.cur.tok == Tok::Sym(";") {
        p.bump()?;
    }
    p.expect_eof()?;
    Ok(stmt)
}

/// Parses one expression that starts at byte `at` of `src` and must be followed by `}`; returns the
/// expression and the offset just after the `}`. Used for `${expr}` substitution templates.
pub(crate) fn parse_template_expr(src: &str, at: usize) -> Result<(Expr, usize), CompileError> {
    let mut p = Parser::new(src, at)?;
    let expr = p.expr()?;
    if p.cur.tok != Tok::Sym("}") {
        return Err(p.unexpected("'}' to close ${...}"));
    }
    Ok((expr, p.cur.end))
}

/// Parses a standalone expression (the whole input). Used by tests and the printer law.
#[cfg(test)]
pub(crate) fn parse_expr(src: &str) -> Result<Expr, CompileError> {
    let mut p = Parser::new(src, 0)?;
    let expr = p.expr()?;
    p.expect_eof()?;
    Ok(expr)
}

impl<'s> Parser<'s> {
    fn new(src: &'s str, at: usize) -> Result<Self, CompileError> {
        let mut lexer = Lexer::new(src, at);
        let cur = lexer.next_token()?;
        Ok(Parser {
            src,
            lexer,
            cur,
            depth: 0,
            nesting: 0,
        })
    }

    fn bump(&mut self) -> Result<Token, CompileError> {
        let next = self.lexer.next_token()?;
        Ok(std::mem::replace(&mut self.cur, next))
    }

    fn unexpected(&self, expected: &str) -> CompileError {
        CompileError::syntax(self.src, self.cur.start, expected, self.cur.tok.describe())
    }

    fn expect_eof(&self) -> Result<(), CompileError> {
        if self.cur.tok == Tok::Eof {
            Ok(())
        } else {
            Err(self.unexpected("end of input"))
        }
    }

    /// Is the current token the keyword `kw` (case-insensitive)?
    fn at_kw(&self, kw: &str) -> bool {
        matches!(&self.cur.tok, Tok::Ident(s) if s.eq_ignore_ascii_case(kw))
    }

    fn eat_kw(&mut self, kw: &str) -> Result<bool, CompileError> {
        if self.at_kw(kw) {
            self.bump()?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn expect_kw(&mut self, kw: &str) -> Result<(), CompileError> {
        if self.eat_kw(kw)? {
            Ok(())
        } else {
            Err(self.unexpected(kw))
        }
    }

    fn eat_sym(&mut self, sym: &str) -> Result<bool, CompileError> {
        if matches!(&self.cur.tok, Tok::Sym(s) if *s == sym) {
            self.bump()?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn expect_sym(&mut self, sym: &str) -> Result<(), CompileError> {
        if self.eat_sym(sym)? {
            Ok(())
        } else {
            Err(self.unexpected(&format!("'{sym}'")))
        }
    }

    /// A name: a bare non-reserved identifier or a backtick-quoted one.
    fn name(&mut self, what: &str) -> Result<String, CompileError> {
        match &self.cur.tok {
            Tok::Ident(s) if !is_reserved(s) => {
                let s = s.clone();
                self.bump()?;
                Ok(s)
            }
            Tok::Quoted(s) => {
                let s = s.clone();
                self.bump()?;
                Ok(s)
            }
            _ => Err(self.unexpected(what)),
        }
    }

    /// `@name`, after the `@` has been consumed: the name must follow directly.
    fn var_name(&mut self) -> Result<String, CompileError> {
        match &self.cur.tok {
            Tok::Ident(s) => {
                let s = s.clone();
                self.bump()?;
                Ok(s)
            }
            _ => Err(self.unexpected("a variable name after '@'")),
        }
    }

    fn statement(&mut self) -> Result<Statement, CompileError> {
        let mut sets = Vec::new();
        if self.eat_kw("SET")? {
            loop {
                let at = self.cur.start;
                self.expect_sym("@")?;
                let name = self.var_name()?;
                self.expect_sym("=")?;
                sets.push((name, self.expr()?, at));
                if !self.eat_sym(",")? {
                    break;
                }
            }
        }
        if !self.at_kw("SELECT") {
            let expected = if sets.is_empty() {
                "SELECT or SET"
            } else {
                "',' or SELECT"
            };
            return Err(self.unexpected(expected));
        }
        self.expect_kw("SELECT")?;
        let value = self.eat_kw("VALUE")?;
        let items_at = self.cur.start;
        let mut items = vec![self.select_item()?];
        while self.eat_sym(",")? {
            items.push(self.select_item()?);
        }
        self.expect_kw("FROM")?;
        let from_at = self.cur.start;
        let from = match &self.cur.tok {
            Tok::Str(s) => s.clone(),
            _ => return Err(self.unexpected("a quoted topic filter such as 'sensors/+/t'")),
        };
        self.bump()?;
        let where_ = if self.eat_kw("WHERE")? {
            Some(self.expr()?)
        } else {
            None
        };
        let mut group_by = Vec::new();
        if self.eat_kw("GROUP")? {
            self.expect_kw("BY")?;
            group_by.push(self.expr()?);
            while self.eat_sym(",")? {
                group_by.push(self.expr()?);
            }
        }
        let having = if self.eat_kw("HAVING")? {
            Some(self.expr()?)
        } else {
            None
        };
        Ok(Statement {
            sets,
            value,
            items,
            items_at,
            from,
            from_at,
            where_,
            group_by,
            having,
        })
    }

    fn select_item(&mut self) -> Result<SelectItem, CompileError> {
        if self.eat_sym("*")? {
            return Ok(SelectItem::Star);
        }
        let expr = self.expr()?;
        let alias = if self.eat_kw("AS")? {
            let mut path = vec![self.name("an alias name")?];
            while self.eat_sym(".")? {
                path.push(self.name("an alias name after '.'")?);
            }
            Some(path)
        } else {
            None
        };
        Ok(SelectItem::Expr { expr, alias })
    }

    pub(crate) fn expr(&mut self) -> Result<Expr, CompileError> {
        self.nested(Self::or)
    }

    /// Goes one level deeper, failing past [`MAX_DEPTH`].
    fn deeper(&mut self) -> Result<(), CompileError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(CompileError::semantic(
                self.src,
                self.cur.start,
                format!("expression nested more than {MAX_DEPTH} levels deep"),
            ));
        }
        Ok(())
    }

    fn binary_left(
        &mut self,
        next: fn(&mut Self) -> Result<Expr, CompileError>,
        op_of: fn(&Tok) -> Option<BinOp>,
    ) -> Result<Expr, CompileError> {
        let mut left = next(self)?;
        let base_depth = self.depth;
        while let Some(op) = op_of(&self.cur.tok) {
            // Each link makes the (left-deep) tree one level deeper.
            self.deeper()?;
            // A binary expression is located where its left operand starts.
            let at = left.at;
            self.bump()?;
            let right = next(self)?;
            left = Expr {
                kind: ExprKind::Binary(op, Box::new(left), Box::new(right)),
                at,
            };
        }
        self.depth = base_depth;
        Ok(left)
    }

    fn or(&mut self) -> Result<Expr, CompileError> {
        self.binary_left(Self::and, |t| match t {
            Tok::Ident(s) if s.eq_ignore_ascii_case("or") => Some(BinOp::Or),
            _ => None,
        })
    }

    fn and(&mut self) -> Result<Expr, CompileError> {
        self.binary_left(Self::not, |t| match t {
            Tok::Ident(s) if s.eq_ignore_ascii_case("and") => Some(BinOp::And),
            _ => None,
        })
    }

    fn not(&mut self) -> Result<Expr, CompileError> {
        if self.at_kw("NOT") {
            let at = self.bump()?.start;
            let inner = self.nested(Self::not)?;
            return Ok(Expr {
                kind: ExprKind::Unary(UnOp::Not, Box::new(inner)),
                at,
            });
        }
        self.cmp()
    }

    fn cmp(&mut self) -> Result<Expr, CompileError> {
        self.binary_left(Self::add, |t| match t {
            Tok::Sym("=") => Some(BinOp::Eq),
            Tok::Sym("<>") | Tok::Sym("!=") => Some(BinOp::Ne),
            Tok::Sym("<") => Some(BinOp::Lt),
            Tok::Sym("<=") => Some(BinOp::Le),
            Tok::Sym(">") => Some(BinOp::Gt),
            Tok::Sym(">=") => Some(BinOp::Ge),
            _ => None,
        })
    }

    fn add(&mut self) -> Result<Expr, CompileError> {
        self.binary_left(Self::mul, |t| match t {
            Tok::Sym("+") => Some(BinOp::Add),
            Tok::Sym("-") => Some(BinOp::Sub),
            _ => None,
        })
    }

    fn mul(&mut self) -> Result<Expr, CompileError> {
        self.binary_left(Self::unary, |t| match t {
            Tok::Sym("*") => Some(BinOp::Mul),
            Tok::Sym("/") => Some(BinOp::Div),
            Tok::Sym("%") => Some(BinOp::Mod),
            _ => None,
        })
    }

    /// Runs `f` one nesting level deeper, so that `- - - - x` and `NOT NOT ...` are bounded too.
    fn nested(
        &mut self,
        f: fn(&mut Self) -> Result<Expr, CompileError>,
    ) -> Result<Expr, CompileError> {
        self.nesting += 1;
        if self.nesting > MAX_NESTING {
            return Err(CompileError::semantic(
                self.src,
                self.cur.start,
                format!("expression nested more than {MAX_NESTING} levels deep"),
            ));
        }
        self.deeper()?;
        let e = f(self);
        self.depth -= 1;
        self.nesting -= 1;
        e
    }

    fn unary(&mut self) -> Result<Expr, CompileError> {
        if self.cur.tok == Tok::Sym("-") {
            let at = self.bump()?.start;
            let inner = self.nested(Self::unary)?;
            return Ok(Expr {
                kind: ExprKind::Unary(UnOp::Neg, Box::new(inner)),
                at,
            });
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Expr, CompileError> {
        let mut e = self.primary()?;
        let base_depth = self.depth;
        loop {
            if matches!(self.cur.tok, Tok::Sym(".") | Tok::Sym("[")) {
                self.deeper()?;
            }
            if self.cur.tok == Tok::Sym(".") {
                let at = self.bump()?.start;
                let key = self.name("a key name after '.'")?;
                e = Expr {
                    kind: ExprKind::Field(Box::new(e), key),
                    at,
                };
            } else if self.cur.tok == Tok::Sym("[") {
                let at = self.bump()?.start;
                let index = self.expr()?;
                self.expect_sym("]")?;
                e = Expr {
                    kind: ExprKind::Index(Box::new(e), Box::new(index)),
                    at,
                };
            } else {
                self.depth = base_depth;
                return Ok(e);
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, CompileError> {
        let at = self.cur.start;
        let lit = |l| ExprKind::Lit(l);
        let kind = match self.cur.tok.clone() {
            Tok::Int(i) => {
                self.bump()?;
                lit(Lit::Int(i))
            }
            Tok::Dec(d) => {
                self.bump()?;
                lit(Lit::Dec(d))
            }
            Tok::Str(s) => {
                self.bump()?;
                lit(Lit::Str(s))
            }
            Tok::Quoted(s) => {
                self.bump()?;
                ExprKind::Ident(s)
            }
            Tok::Sym("@") => {
                self.bump()?;
                ExprKind::Var(self.var_name()?)
            }
            Tok::Sym("(") => {
                self.bump()?;
                let e = self.expr()?;
                self.expect_sym(")")?;
                return Ok(e);
            }
            Tok::Sym("[") => {
                self.bump()?;
                let mut items = Vec::new();
                if !self.eat_sym("]")? {
                    loop {
                        items.push(self.expr()?);
                        if self.eat_sym("]")? {
                            break;
                        }
                        if !self.eat_sym(",")? {
                            return Err(self.unexpected("',' or ']'"));
                        }
                    }
                }
                ExprKind::Array(items)
            }
            Tok::Sym("{") => {
                self.bump()?;
                let mut pairs = Vec::new();
                if !self.eat_sym("}")? {
                    loop {
                        let key = match self.cur.tok.clone() {
                            Tok::Str(s) | Tok::Quoted(s) => s,
                            Tok::Ident(s) if !is_reserved(&s) => s,
                            _ => return Err(self.unexpected("an object key")),
                        };
                        self.bump()?;
                        self.expect_sym(":")?;
                        pairs.push((key, self.expr()?));
                        if self.eat_sym("}")? {
                            break;
                        }
                        if !self.eat_sym(",")? {
                            return Err(self.unexpected("',' or '}'"));
                        }
                    }
                }
                ExprKind::Object(pairs)
            }
            Tok::Ident(word) => {
                let lower = word.to_ascii_lowercase();
                match lower.as_str() {
                    "null" => {
                        self.bump()?;
                        lit(Lit::Null)
                    }
                    "true" | "false" => {
                        self.bump()?;
                        lit(Lit::Bool(lower == "true"))
                    }
                    "case" => {
                        self.bump()?;
                        self.case()?
                    }
                    _ if is_reserved(&word) => return Err(self.unexpected("an expression")),
                    _ => {
                        self.bump()?;
                        if self.cur.tok == Tok::Sym("(") {
                            self.bump()?;
                            if lower == "cast" {
                                let e = self.expr()?;
                                self.expect_kw("AS")?;
                                let ty =
                                    self.name("a type name (Int, Decimal, String, Boolean)")?;
                                self.expect_sym(")")?;
                                ExprKind::Cast(Box::new(e), ty)
                            } else {
                                ExprKind::Call(word, self.args()?)
                            }
                        } else {
                            ExprKind::Ident(word)
                        }
                    }
                }
            }
            _ => return Err(self.unexpected("an expression")),
        };
        Ok(Expr { kind, at })
    }

    /// Function arguments after `(`, through the closing `)`. `*` is allowed as an argument.
    fn args(&mut self) -> Result<Vec<Expr>, CompileError> {
        let mut args = Vec::new();
        if self.eat_sym(")")? {
            return Ok(args);
        }
        loop {
            if self.cur.tok == Tok::Sym("*") {
                let at = self.bump()?.start;
                args.push(Expr {
                    kind: ExprKind::Star,
                    at,
                });
            } else {
                args.push(self.expr()?);
            }
            if self.eat_sym(")")? {
                return Ok(args);
            }
            if !self.eat_sym(",")? {
                return Err(self.unexpected("',' or ')'"));
            }
        }
    }

    fn case(&mut self) -> Result<ExprKind, CompileError> {
        let operand = if self.at_kw("WHEN") {
            None
        } else {
            Some(Box::new(self.expr()?))
        };
        let mut whens = Vec::new();
        while self.eat_kw("WHEN")? {
            let w = self.expr()?;
            self.expect_kw("THEN")?;
            whens.push((w, self.expr()?));
        }
        if whens.is_empty() {
            return Err(self.unexpected("WHEN"));
        }
        let otherwise = if self.eat_kw("ELSE")? {
            Some(Box::new(self.expr()?))
        } else {
            None
        };
        if !self.eat_kw("END")? {
            return Err(self.unexpected("WHEN, ELSE or END"));
        }
        Ok(ExprKind::Case {
            operand,
            whens,
            otherwise,
        })
    }
}

fn is_reserved(word: &str) -> bool {
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parse errors: (sql, line, column, message).
    #[test]
    fn syntax_errors_point_at_the_problem() {
        let cases: &[(&str, usize, usize, &str)] = &[
            ("SELECT a FORM 'x'", 1, 10, "expected FROM, found 'FORM'"),
            (
                "SELECT FROM 'x'",
                1,
                8,
                "expected an expression, found 'FROM'",
            ),
            (
                "SELECT a FROM x",
                1,
                15,
                "expected a quoted topic filter such as 'sensors/+/t', found 'x'",
            ),
            (
                "SELECT a\nFROM 'x'\nWHERE",
                3,
                6,
                "expected an expression, found end of input",
            ),
            ("SELECT (a FROM 'x'", 1, 11, "expected ')', found 'FROM'"),
            (
                "SELECT a AS FROM 'x'",
                1,
                13,
                "expected an alias name, found 'FROM'",
            ),
            (
                "SELECT f(a b) FROM 'x'",
                1,
                12,
                "expected ',' or ')', found 'b'",
            ),
            (
                "SELECT [1 2] FROM 'x'",
                1,
                11,
                "expected ',' or ']', found number 2",
            ),
            (
                "SELECT {'a' 1} FROM 'x'",
                1,
                13,
                "expected ':', found number 1",
            ),
            (
                "SELECT CASE a END FROM 'x'",
                1,
                15,
                "expected WHEN, found 'END'",
            ),
            (
                "SELECT CASE a WHEN 1 THEN 2 FROM 'x'",
                1,
                29,
                "expected WHEN, ELSE or END, found 'FROM'",
            ),
            (
                "SELECT 'abc FROM x",
                1,
                8,
                "expected a closing ', found end of input",
            ),
            (
                "SELECT a FROM 'x' extra",
                1,
                19,
                "expected end of input, found 'extra'",
            ),
            (
                "SELECT a # b FROM 'x'",
                1,
                10,
                "expected a token, found character '#'",
            ),
            (
                "SELECT cast(a Int) FROM 'x'",
                1,
                15,
                "expected AS, found 'Int'",
            ),
            ("SELECT a FROM 'x' GROUP x", 1, 25, "expected BY, found 'x'"),
            (
                "SELECT a. FROM 'x'",
                1,
                11,
                "expected a key name after '.', found 'FROM'",
            ),
        ];
        for (sql, line, column, message) in cases {
            let err = parse_statement(sql).expect_err(sql);
            assert_eq!(
                (err.line, err.column, err.message().as_str()),
                (*line, *column, *message),
                "{sql}"
            );
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(parse_expr(&deep).is_err());
        let negs = format!("{}1", "-".repeat(10_000));
        assert!(parse_expr(&negs).is_err());
        let nots = format!("{}true", "NOT ".repeat(10_000));
        assert!(parse_expr(&nots).is_err());
        let sum = format!("1{}", " + 1".repeat(10_000));
        assert!(parse_expr(&sum).is_err());
        let fields = format!("(a){}", ".b".repeat(10_000));
        assert!(parse_expr(&fields).is_err());
        let indexes = format!("a{}", "[0]".repeat(10_000));
        assert!(parse_expr(&indexes).is_err());
        // Realistic rules stay far below the bounds.
        let ands = vec!["x > 1"; 100].join(" AND ");
        assert!(parse_expr(&ands).is_ok());
        let parens = format!("{}1{}", "(".repeat(30), ")".repeat(30));
        assert!(parse_expr(&parens).is_ok());
    }

    #[test]
    fn precedence() {
        let cases = [
            ("1 + 2 * 3", "(1 + (2 * 3))"),
            ("a OR b AND NOT c = 1", "(a OR (b AND (NOT (c = 1))))"),
            ("-a.b[0]", "(-((a).b)[0])"),
            ("1 - 2 - 3", "((1 - 2) - 3)"),
            ("x <> 1 AND y != 2", "((x <> 1) AND (y <> 2))"),
        ];
        for (src, printed) in cases {
            assert_eq!(parse_expr(src).expect(src).to_string(), printed, "{src}");
        }
    }
}
