//! `grove-config`: the vocabulary every section of `grove.toml` shares: where a value came from
//! ([`Origin`], [`Located`]), what can be wrong with it ([`ConfigError`]), and the [`Resolver`] that
//! turns a section's raw (serde) form into its resolved one, remembering keys and lines.
//!
//! Each component crate owns its section (raw form, resolved form, checks) and resolves it with a
//! [`Resolver`]; the binary (`grove-gateway`) parses the file and hands each section to its crate,
//! so that an error found later, at startup (a port already in use, a data directory that cannot be
//! written), still names the key, the file and the line.
//!
//! Architecture invariant: this crate depends on nothing of Grove's and holds no section of its
//! own; it is the base that every component's configuration builds on, so it never grows component
//! knowledge. `toml::Spanned` appears in [`Resolver`]'s signatures (the raw sections are read with
//! it), toml is not re-exported.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

/// Where a configured value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file the value was read from; `None` for built-in defaults.
    pub file: Option<PathBuf>,
    /// The dotted key, e.g. `broker.listeners[0].bind`.
    pub key: String,
    /// The 1-based line of the value in the file, when it came from the file.
    pub line: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}:{}: `{}`", file.display(), line, self.key),
            (Some(file), None) => write!(f, "{}: `{}` (default)", file.display(), self.key),
            (None, _) => write!(f, "`{}` (default)", self.key),
        }
    }
}

/// Everything that can be wrong with a configuration, found while loading it or while starting on it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("{}:{line}:{column}: {message}", file.display())]
    Parse {
        /// The file.
        file: PathBuf,
        /// 1-based line of the offending text.
        line: usize,
        /// 1-based column of the offending text.
        column: usize,
        /// The parser's message, which names the key.
        message: String,
    },
    /// A value is well-typed but impossible (out of range, conflicting, or refused by the machine).
    #[error("{origin}: {message}")]
    Invalid {
        /// The key at fault.
        origin: Origin,
        /// What is wrong with it.
        message: String,
    },
}

/// A value with the place it was configured, so startup errors can point at it.
///
/// Two `Located` values are equal when their values are: where a value was written is not part of
/// the configuration's meaning.
#[derive(Debug, Clone)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// Where it was set.
    pub origin: Origin,
}

impl<T: PartialEq> PartialEq for Located<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<T: Eq> Eq for Located<T> {}

/// Turns raw sections into resolved ones, remembering where each value came from.
pub struct Resolver<'a> {
    lines: LineIndex<'a>,
    file: Option<&'a Path>,
}

impl<'a> Resolver<'a> {
    /// A resolver for `text`, read from `file` (`None`: built-in text, e.g. the defaults).
    pub fn new(text: &'a str, file: Option<&'a Path>) -> Self {
        Resolver {
            lines: LineIndex::new(text),
            file,
        }
    }

    /// Where `key` was set: the line of `span` in the file, or the built-in default.
    pub fn origin(&self, key: &str, span: Option<Range<usize>>) -> Origin {
        Origin {
            file: self.file.map(Path::to_owned),
            key: key.to_owned(),
            line: span.map(|s| self.lines.line_col(s.start).0),
        }
    }

    /// A value with where it was set; `default` (at the key's default origin) when the file has none.
    pub fn located<T>(&self, key: &str, value: Option<Spanned<T>>, default: T) -> Located<T> {
        match value {
            Some(v) => {
                let span = v.span();
                Located {
                    value: v.into_inner(),
                    origin: self.origin(key, Some(span)),
                }
            }
            None => Located {
                value: default,
                origin: self.origin(key, None),
            },
        }
    }

    /// The error for a value that is well-typed but impossible.
    pub fn invalid<T>(&self, located: &Located<T>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: located.origin.clone(),
            message: message.into(),
        }
    }

    /// Checks that a value lies in `range`, naming the key when it does not.
    pub fn ranged<T: PartialOrd + fmt::Display + Copy>(
        &self,
        key: &str,
        value: Option<Spanned<T>>,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError> {
        let v = self.located(key, value, default);
        if !range.contains(&v.value) {
            return Err(self.invalid(
                &v,
                format!(
                    "{} is out of range: it must be between {} and {}",
                    v.value,
                    range.start(),
                    range.end()
                ),
            ));
        }
        Ok(v.value)
    }

    /// A path from the file, relative to the file's directory.
    pub fn relative(&self, path: PathBuf) -> PathBuf {
        match self.file.and_then(Path::parent) {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path,
        }
    }
}

/// The start of every line of a text, found once, so that each value's line is a binary search
/// and not a scan from the top of the file: with one scan per value, loading 10,000 `[[rules]]`
/// took seconds (issue 18). Hand-written: a dozen lines, where the `line-index` crate
/// (rust-analyzer's) would bring two dependencies and UTF-16 columns nobody here needs.
pub struct LineIndex<'a> {
    text: &'a str,
    /// Byte offsets where lines start; the first is 0.
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    /// Indexes `text`'s lines.
    pub fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { text, starts }
    }

    /// 1-based line and column (in characters) of a byte offset; an offset past the end is the end.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        // The number of lines starting at or before `offset`: at least 1 (the first starts at 0).
        let line = self.starts.partition_point(|&start| start <= offset);
        let column = self.text[self.starts[line - 1]..offset].chars().count() + 1;
        (line, column)
    }
}

/// 1-based line and column of a byte offset (one lookup; [`LineIndex`] for many).
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    LineIndex::new(text).line_col(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }

    /// The index answers as a scan from the top of the text would, at every offset: line starts,
    /// line ends (the newline itself), empty lines, multi-byte characters (columns count
    /// characters), a text without a final newline, and offsets past the end.
    #[test]
    fn line_index_agrees_with_a_scan_at_every_offset() {
        fn scan(text: &str, offset: usize) -> (usize, usize) {
            let before = &text[..offset.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            (line, column)
        }
        for text in [
            "",
            "\n",
            "a",
            "ab\ncd",
            "\n\nx\n",
            "é=1\nnom = \"ü\"\n\n[[rules]]\nname=\"r\"",
        ] {
            let index = LineIndex::new(text);
            for offset in
                (0..=text.len() + 2).filter(|&o| o > text.len() || text.is_char_boundary(o))
            {
                assert_eq!(
                    index.line_col(offset),
                    scan(text, offset),
                    "{text:?} at {offset}"
                );
            }
        }
    }

    #[test]
    fn origins_name_the_line_of_the_span() {
        let text = "a = 1\n\n[x]\nb = 2\n";
        let r = Resolver::new(text, Some(Path::new("grove.toml")));
        let at = text.find("b =").expect("b is in the text");
        let origin = r.origin("x.b", Some(at..at + 5));
        assert_eq!(origin.line, Some(4));
        assert_eq!(origin.to_string(), "grove.toml:4: `x.b`");
        assert_eq!(r.origin("x.c", None).line, None);
    }
}
