//! A local certificate authority for device identities (rcgen): `grove device init-ca` creates it
//! with a server certificate for the gateway, `grove device add --cert` issues device certificates
//! whose common name is the device id.
//!
//! Files, in `{data_dir}/pki/`: `ca.pem`, `ca.key`, `server.pem`, `server.key`, and
//! `devices/{id}.pem` + `devices/{id}.key`. Keys are written with mode 0600. ECDSA P-256 keys.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// Why the CA could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// rcgen failed.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The CA does not exist yet.
    #[error("no local CA in {}: run `grove device init-ca` first", .0.display())]
    Missing(PathBuf),
    /// The CA exists already.
    #[error("a local CA exists already in {}", .0.display())]
    Exists(PathBuf),
}

/// The PKI folder of a data directory.
pub fn pki_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

/// Creates the CA and a server certificate for `server_names` (DNS names or IP addresses).
pub fn init(dir: &Path, server_names: &[String]) -> Result<(), CaError> {
    if dir.join("ca.pem").exists() {
        return Err(CaError::Exists(dir.to_owned()));
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name = name("Grove local device CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2049, 12, 31);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write(&dir.join("ca.pem"), cert.pem().as_bytes(), 0o644)?;
    write(&dir.join("ca.key"), key.serialize_pem().as_bytes(), 0o600)?;
    let (pem, key, _) = issue(
        dir,
        "grove",
        server_names,
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    write(&dir.join("server.pem"), pem.as_bytes(), 0o644)?;
    write(&dir.join("server.key"), key.as_bytes(), 0o600)
}

/// Where a device's new certificate was written, with its key and the local CA that signed it.
pub struct Issued {
    /// The certificate (PEM).
    pub certificate: PathBuf,
    /// Its private key (PEM, mode 0600).
    pub key: PathBuf,
    /// The local CA's certificate (PEM), which also signed the gateway's TLS certificate.
    pub ca: PathBuf,
}

/// Issues a device certificate (common name = `id`), writes it with its key to
/// `devices/{id}.pem|.key`, and returns where, with the certificate's DER for fingerprinting.
pub fn issue_device(dir: &Path, id: &str) -> Result<(Issued, Vec<u8>), CaError> {
    let (pem, key, der) = issue(dir, id, &[], ExtendedKeyUsagePurpose::ClientAuth)?;
    let devices = dir.join("devices");
    std::fs::create_dir_all(&devices).map_err(|source| CaError::Io {
        path: devices.clone(),
        source,
    })?;
    let issued = Issued {
        certificate: devices.join(format!("{id}.pem")),
        key: devices.join(format!("{id}.key")),
        ca: dir.join("ca.pem"),
    };
    write(&issued.certificate, pem.as_bytes(), 0o644)?;
    write(&issued.key, key.as_bytes(), 0o600)?;
    Ok((issued, der))
}

/// Issues a certificate signed by the CA in `dir`; returns (certificate PEM, key PEM, DER).
fn issue(
    dir: &Path,
    cn: &str,
    sans: &[String],
    usage: ExtendedKeyUsagePurpose,
) -> Result<(String, String, Vec<u8>), CaError> {
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read_to_string(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                CaError::Missing(dir.to_owned())
            } else {
                CaError::Io { path, source }
            }
        })
    };
    let ca_key = KeyPair::from_pem(&read("ca.key")?)?;
    let ca = CertificateParams::from_ca_cert_pem(&read("ca.pem")?)?.self_signed(&ca_key)?;
    let mut params = CertificateParams::new(sans.to_vec())?;
    params.distinguished_name = name(cn);
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2049, 12, 31);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    Ok((cert.pem(), key.serialize_pem(), cert.der().to_vec()))
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// Writes `bytes` to `path` with `mode` (creating its directory); also the provisioning record's
/// writer (`cli.rs`).
pub(crate) fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CaError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)
}
