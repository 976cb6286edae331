//! The lexer: turns SQL text into tokens with byte spans, on demand.
//!
//! It is incremental (the parser pulls one token at a time from any starting offset) so that the
//! substitution-template parser can lex an expression that starts in the middle of a string and ends at
//! the `}` that closes `${...}`. Keywords are not special here: they are identifiers that the parser
//! compares case-insensitively, which is how AWS lets keywords appear as JSON keys in backticks.

use crate::error::CompileError;

/// One token kind. Identifiers keep their text; literals keep their value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// A bare identifier or keyword, e.g. `SELECT`, `temp`.
    Ident(String),
    /// A backtick-quoted identifier, never a keyword, e.g. `` `my-key` ``.
    Quoted(String),
    /// A string literal in single or double quotes.
    Str(String),
    /// An integer literal that fits an i64.
    Int(i64),
    /// A decimal literal (or an integer too large for i64).
    Dec(f64),
    /// Punctuation and operators, as their text.
    Sym(&'static str),
    /// The end of the input.
    Eof,
}

impl Tok {
    /// How the token is named in "found ..." messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("'{s}'"),
            Tok::Quoted(s) => format!("`{s}`"),
            Tok::Str(s) => format!("string '{s}'"),
            Tok::Int(i) => format!("number {i}"),
            Tok::Dec(d) => format!("number {d}"),
            Tok::Sym(s) => format!("'{s}'"),
            Tok::Eof => "end of input".to_string(),
        }
    }
}

/// A token with its byte span in the source.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub(crate) tok: Tok,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// Operators and punctuation, longest first so that `<=` wins over `<`.
const SYMBOLS: &[&str] = &[
    "<>", "!=", "<=", ">=", ",", ".", "(", ")", "[", "]", "{", "}", ":", "*", "+", "-", "/", "%",
    "=", "<", ">", "@", ";",
];

/// Pulls tokens out of `src` starting at a byte offset.
pub(crate) struct Lexer<'s> {
    src: &'s str,
    pos: usize,
}

impl<'s> Lexer<'s> {
    /// A lexer over `src` that starts at byte `pos` (a char boundary).
    pub(crate) fn new(src: &'s str, pos: usize) -> Self {
        Lexer { src, pos }
    }

    /// The next token, or a syntax error for an unterminated string or a stray character.
    pub(crate) fn next_token(&mut self) -> Result<Token, CompileError> {
        self.skip_space();
        let start = self.pos;
        let rest = &self.src[start..];
        let Some(c) = rest.chars().next() else {
            return Ok(Token {
                tok: Tok::Eof,
                start,
                end: start,
            });
        };
        let tok = if c.is_ascii_alphabetic() || c == '_' || c == '$' {
            let len = rest
                .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_' || ch == '$'))
                .unwrap_or(rest.len());
            self.pos += len;
            Tok::Ident(rest[..len].to_string())
        } else if c.is_ascii_digit() {
            self.number()?
        } else if c == '\'' || c == '"' {
            Tok::Str(self.quoted(c)?)
        } else if c == '`' {
            Tok::Quoted(self.quoted('`')?)
        } else if let Some(sym) = SYMBOLS.iter().find(|s| rest.starts_with(**s)) {
            self.pos += sym.len();
            Tok::Sym(sym)
        } else {
            return Err(CompileError::syntax(
                self.src,
                start,
                "a token",
                format!("character {c:?}"),
            ));
        };
        Ok(Token {
            tok,
            start,
            end: self.pos,
        })
    }

    /// Skips white space. There are no comments: AWS documents none, and `--` must stay two minus
    /// signs (`5--3` is 8).
    fn skip_space(&mut self) {
        let rest = &self.src[self.pos..];
        self.pos += rest.len() - rest.trim_start().len();
    }

    /// Lexes `123`, `1.5`, `2e10`, `5E-12`. An integer too large for i64 becomes a decimal, as AWS's
    /// 34-digit integers would otherwise be lost entirely.
    fn number(&mut self) -> Result<Tok, CompileError> {
        let bytes = self.src.as_bytes();
        let start = self.pos;
        let mut end = start;
        let digits = |mut i: usize| {
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            i
        };
        end = digits(end);
        let mut is_int = true;
        if end + 1 < bytes.len() && bytes[end] == b'.' && bytes[end + 1].is_ascii_digit() {
            end = digits(end + 1);
            is_int = false;
        }
        if end < bytes.len() && (bytes[end] == b'e' || bytes[end] == b'E') {
            let mut exp = end + 1;
            if exp < bytes.len() && (bytes[exp] == b'-' || bytes[exp] == b'+') {
                exp += 1;
            }
            if exp < bytes.len() && bytes[exp].is_ascii_digit() {
                end = digits(exp);
                is_int = false;
            }
        }
        let text = &self.src[start..end];
        self.pos = end;
        if is_int {
            if let Ok(i) = text.parse::<i64>() {
                return Ok(Tok::Int(i));
            }
        }
        text.parse::<f64>()
            .ok()
            .filter(|d| d.is_finite())
            .map(Tok::Dec)
            .ok_or_else(|| CompileError::semantic(self.src, start, "number out of range"))
    }

    /// Lexes a quoted string or identifier. The quote is escaped by doubling it (`'it''s'`, as in
    /// ANSI SQL) or with a backslash; `\n`, `\t` and `\\` are understood too.
    fn quoted(&mut self, quote: char) -> Result<String, CompileError> {
        let start = self.pos;
        let mut out = String::new();
        let mut chars = self.src[start + 1..].char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == quote {
                if chars.peek().map(|&(_, n)| n) == Some(quote) {
                    chars.next();
                    out.push(quote);
                    continue;
                }
                self.pos = start + 1 + i + 1;
                return Ok(out);
            }
            if c == '\\' {
                match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, other)) => out.push(other),
                    None => break,
                }
                continue;
            }
            out.push(c);
        }
        Err(CompileError::syntax(
            self.src,
            start,
            format!("a closing {quote}"),
            "end of input",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lex(src: &str) -> Vec<Tok> {
        let mut lexer = Lexer::new(src, 0);
        let mut out = Vec::new();
        loop {
            let t = lexer.next_token().expect("lexes");
            if t.tok == Tok::Eof {
                return out;
            }
            out.push(t.tok);
        }
    }

    #[test]
    fn tokens() {
        assert_eq!(
            lex("a.b<=1.5e1 'it''s' `k-1` --\n<>"),
            vec![
                Tok::Ident("a".into()),
                Tok::Sym("."),
                Tok::Ident("b".into()),
                Tok::Sym("<="),
                Tok::Dec(15.0),
                Tok::Str("it's".into()),
                Tok::Quoted("k-1".into()),
                Tok::Sym("-"),
                Tok::Sym("-"),
                Tok::Sym("<>"),
            ]
        );
        assert_eq!(lex("99999999999999999999"), vec![Tok::Dec(1e20)]);
    }
}
