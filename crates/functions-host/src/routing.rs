//! Versions, `$LATEST` and aliases: which version an invocation runs (pure).
//!
//! Each deploy makes a new immutable version numbered from 1. A qualifier names what to invoke:
//! `$LATEST` (the newest version), a version number, or an alias. An alias points at a version
//! and may send a share of its traffic to a second version (a canary): the caller passes a draw
//! uniform in `[0, 1)` (the service uses a random one; tests a seeded one), so routing stays a pure
//! function.

use std::collections::BTreeMap;

use crate::manifest::valid_name;

/// The qualifier of the newest version.
pub const LATEST: &str = "$LATEST";

/// What an invocation names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Qualifier {
    /// The newest version.
    Latest,
    /// One version.
    Version(u64),
    /// An alias.
    Alias(String),
}

/// Why a qualifier cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    /// Not `$LATEST`, a number or a valid alias name.
    #[error("{0:?} is not a qualifier ($LATEST, a version number or an alias name)")]
    BadQualifier(String),
    /// The function has no deployed version.
    #[error("the function has no version")]
    NoVersion,
    /// No such version.
    #[error("version {0} does not exist")]
    NoSuchVersion(u64),
    /// No such alias.
    #[error("alias {0:?} does not exist")]
    NoSuchAlias(String),
    /// A weight over 100 %.
    #[error("a weight must be between 0 and 100 percent, not {0}")]
    BadWeight(u8),
}

impl Qualifier {
    /// Parses `$LATEST`, a version number (from 1) or an alias name.
    pub fn parse(text: &str) -> Result<Qualifier, RoutingError> {
        if text == LATEST {
            return Ok(Qualifier::Latest);
        }
        if let Ok(n) = text.parse::<u64>() {
            return if n >= 1 {
                Ok(Qualifier::Version(n))
            } else {
                Err(RoutingError::BadQualifier(text.to_owned()))
            };
        }
        if valid_name(text) && !text.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(Qualifier::Alias(text.to_owned()));
        }
        Err(RoutingError::BadQualifier(text.to_owned()))
    }

    /// The text [`Qualifier::parse`] reads back.
    pub fn text(&self) -> String {
        match self {
            Qualifier::Latest => LATEST.to_owned(),
            Qualifier::Version(n) => n.to_string(),
            Qualifier::Alias(a) => a.clone(),
        }
    }
}

/// An alias: a version, and optionally a share of traffic for another one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    /// The main version.
    pub version: u64,
    /// A second version and the percentage of invocations it receives.
    pub weight: Option<(u64, u8)>,
}

impl Alias {
    /// Checks the weight.
    pub fn new(version: u64, weight: Option<(u64, u8)>) -> Result<Alias, RoutingError> {
        if let Some((_, pct)) = weight {
            if pct > 100 {
                return Err(RoutingError::BadWeight(pct));
            }
        }
        Ok(Alias { version, weight })
    }
}

/// The versions and aliases of one function.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    /// Deployed version numbers.
    pub versions: Vec<u64>,
    /// Aliases by name.
    pub aliases: BTreeMap<String, Alias>,
}

impl Routes {
    /// The newest version.
    pub fn latest(&self) -> Option<u64> {
        self.versions.iter().copied().max()
    }

    /// The number the next deploy gets.
    pub fn next_version(&self) -> u64 {
        self.latest().map_or(1, |v| v + 1)
    }

    /// Checks that an alias points at existing versions.
    pub fn check_alias(&self, alias: &Alias) -> Result<(), RoutingError> {
        for v in std::iter::once(alias.version).chain(alias.weight.map(|w| w.0)) {
            if !self.versions.contains(&v) {
                return Err(RoutingError::NoSuchVersion(v));
            }
        }
        Ok(())
    }

    /// The version `qualifier` runs, given a draw uniform in `[0, 1)` for weighted aliases.
    pub fn resolve(&self, qualifier: &Qualifier, draw: f64) -> Result<u64, RoutingError> {
        match qualifier {
            Qualifier::Latest => self.latest().ok_or(RoutingError::NoVersion),
            Qualifier::Version(v) => self
                .versions
                .contains(v)
                .then_some(*v)
                .ok_or(RoutingError::NoSuchVersion(*v)),
            Qualifier::Alias(name) => {
                let alias = self
                    .aliases
                    .get(name)
                    .ok_or_else(|| RoutingError::NoSuchAlias(name.clone()))?;
                Ok(match alias.weight {
                    Some((other, pct)) if draw * 100.0 < f64::from(pct) => other,
                    _ => alias.version,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes {
        let mut r = Routes {
            versions: vec![1, 2, 3],
            ..Routes::default()
        };
        r.aliases
            .insert("live".into(), Alias::new(2, None).unwrap());
        r.aliases
            .insert("canary".into(), Alias::new(2, Some((3, 25))).unwrap());
        r
    }

    /// One case per line: qualifier text, draw, expected version or error.
    #[test]
    fn qualifiers_resolve() {
        let r = routes();
        let cases: &[(&str, f64, Result<u64, RoutingError>)] = &[
            ("$LATEST", 0.5, Ok(3)),
            ("1", 0.5, Ok(1)),
            ("4", 0.5, Err(RoutingError::NoSuchVersion(4))),
            ("live", 0.99, Ok(2)),
            ("canary", 0.0, Ok(3)),
            ("canary", 0.2499, Ok(3)),
            ("canary", 0.25, Ok(2)),
            ("nope", 0.5, Err(RoutingError::NoSuchAlias("nope".into()))),
        ];
        for (text, draw, want) in cases {
            let q = Qualifier::parse(text).unwrap();
            assert_eq!(&r.resolve(&q, *draw), want, "{text} {draw}");
        }
        for bad in ["0", "a:b", "", "$latest"] {
            assert!(Qualifier::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Routes::default().resolve(&Qualifier::Latest, 0.0),
            Err(RoutingError::NoVersion)
        );
    }

    #[test]
    fn a_weighted_alias_splits_traffic_by_its_weight() {
        // 10,000 seeded draws: 25 % +- 1.5 % (more than 3 standard deviations) go to the canary.
        let r = routes();
        let mut rng = fastrand::Rng::with_seed(7);
        let canary = Qualifier::Alias("canary".into());
        let n = 10_000;
        let to_3 = (0..n)
            .filter(|_| r.resolve(&canary, rng.f64()).unwrap() == 3)
            .count();
        let share = to_3 as f64 / n as f64;
        assert!((0.235..=0.265).contains(&share), "{share}");
    }

    #[test]
    fn aliases_must_point_at_versions_and_weights_at_most_100() {
        let r = routes();
        assert_eq!(
            r.check_alias(&Alias::new(1, Some((9, 5))).unwrap()),
            Err(RoutingError::NoSuchVersion(9))
        );
        assert_eq!(
            Alias::new(1, Some((2, 101))),
            Err(RoutingError::BadWeight(101))
        );
        assert_eq!(r.next_version(), 4);
    }
}
