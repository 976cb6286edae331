//! The `[deploy]` section, in its raw (as written) and resolved forms: whether deployments also
//! come from AWS IoT Jobs over the cloud link, and what artifact downloads trust besides the
//! system's roots. (`grove deploy` works without it: local deployments need no configuration.)

use std::path::PathBuf;

use grove_config::{ConfigError, Located, Resolver};
use serde::Deserialize;
use toml::Spanned;

/// The `[deploy]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeploy {
    jobs: Option<Spanned<bool>>,
    artifact_ca: Option<Spanned<PathBuf>>,
}

/// The deployments' section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployConfig {
    /// Take deployments from AWS IoT Jobs over the cloud link (the thing is `[cloud] thing`). Off
    /// by default: AWS IoT Core closes the connection of a client that publishes where its policy
    /// does not allow, so the Jobs topics are used only when the operator says the policy has
    /// them. The origin is where the check that `[cloud]` is configured points.
    pub jobs: Located<bool>,
    /// A CA certificate file (PEM) trusted for artifact URLs besides the system's roots (made
    /// absolute); its origin is where an unusable file's error points.
    pub artifact_ca: Option<Located<PathBuf>>,
}

/// Resolves `[deploy]`; a relative `artifact_ca` is relative to the configuration file.
pub fn resolve(r: &Resolver<'_>, raw: RawDeploy) -> Result<DeployConfig, ConfigError> {
    let jobs = r.located("deploy.jobs", raw.jobs, false);
    let artifact_ca = match raw.artifact_ca {
        None => None,
        Some(p) => {
            let mut located: Located<PathBuf> =
                r.located("deploy.artifact_ca", Some(p), PathBuf::new());
            located.value = r.relative(located.value);
            if !located.value.is_file() {
                let message = format!("{} is not a file", located.value.display());
                return Err(r.invalid(&located, message));
            }
            Some(located)
        }
    };
    Ok(DeployConfig { jobs, artifact_ca })
}
