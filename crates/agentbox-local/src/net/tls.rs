//! TLS for inspected hosts: a per-sandbox certificate authority for the sandbox side, and the
//! host's trust roots for the destination side.
//!
//! Each sandbox gets its own CA at create ([`SandboxCa`]). Its certificate goes into the sandbox's
//! trust bundle; its private key stays in this process's memory only. For each inspected host the
//! proxy issues a leaf certificate signed by that CA, and connects to the real destination with
//! [`upstream_config`], which verifies the destination against the host's roots (the system store)
//! plus `LocalConfig::upstream_extra_roots`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use agentbox_core::LockExt;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Most leaf certificates kept per sandbox; the cache starts over when full.
const MAX_LEAVES: usize = 256;

/// Why TLS for the egress proxy could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Generating or signing a certificate failed.
    #[error("cannot generate the sandbox's TLS certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused a configuration.
    #[error("cannot configure TLS for the egress proxy: {0}")]
    Config(#[from] rustls::Error),
    /// An extra root file can't be read or holds no certificate.
    #[error("cannot use {path} as an upstream trust root: {reason}; upstream_extra_roots takes PEM certificate files")]
    Root {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A sandbox's certificate authority; the private key never leaves this struct.
pub struct SandboxCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    /// One key for every leaf of this sandbox.
    leaf_key: KeyPair,
    leaves: Mutex<HashMap<String, Arc<ServerConfig>>>,
}

impl std::fmt::Debug for SandboxCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxCa").finish_non_exhaustive()
    }
}

impl SandboxCa {
    /// Generates a CA for `sandbox` (an ECDSA P-256 key, valid as long as rcgen's defaults).
    ///
    /// # Errors
    /// When a key or the certificate can't be generated.
    pub fn generate(sandbox: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("agentbox sandbox {sandbox} egress CA"));
        dn.push(DnType::OrganizationName, "agentbox");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            leaf_key: KeyPair::generate()?,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate in PEM form (public).
    #[must_use]
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server configuration presenting a certificate for `host` (a name or an IP address), HTTP/1.1 only.
    ///
    /// # Errors
    /// When the certificate can't be issued.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, TlsError> {
        if let Some(c) = self.leaves.lock_unpoisoned().get(host) {
            return Ok(c.clone());
        }
        let mut params = CertificateParams::new(vec![host.to_owned()])?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, host);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&self.leaf_key, &self.issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), self.cert_der.clone()], key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let mut leaves = self.leaves.lock_unpoisoned();
        if leaves.len() >= MAX_LEAVES {
            leaves.clear();
        }
        leaves.insert(host.to_owned(), config.clone());
        Ok(config)
    }
}

/// Reads the PEM certificates in `extra_roots` (checked when the backend starts, so a bad path is reported
/// then rather than at the first inspected connection).
///
/// # Errors
/// When one can't be read or parsed.
pub fn read_extra_roots(extra_roots: &[PathBuf]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut store = RootCertStore::empty();
    let mut out = Vec::new();
    for path in extra_roots {
        out.extend(add_pem_roots(&mut store, path)?);
    }
    Ok(out)
}

/// The client configuration for connections to inspected destinations: the host's system roots
/// plus `extra_roots`, HTTP/1.1 only. Returns the configuration and a note when the system store
/// could not be read in full. Reading the system store takes tens of milliseconds (hundreds of
/// files): it is done at the first inspected connection, not when the backend starts.
///
/// # Errors
/// When rustls refuses the configuration.
pub fn upstream_config(
    extra_roots: &[CertificateDer<'static>],
) -> Result<(Arc<ClientConfig>, Option<String>), TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    let mut note = (added == 0).then(|| {
        "no system trust roots were found on the host: secrets and inspected hosts can reach only \
         destinations whose roots are in upstream_extra_roots"
            .to_owned()
    });
    if added > 0 && !native.errors.is_empty() {
        note = Some(format!("some system trust roots could not be loaded: {}", native.errors[0]));
    }
    roots.add_parsable_certificates(extra_roots.iter().cloned());
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), note))
}

/// The host's trust roots where they are not in one of the usual bundle files (another distribution's
/// layout, `SSL_CERT_FILE`, `SSL_CERT_DIR`), as PEM: what a sandbox's trust bundle starts with, so that its
/// clients, told to trust that bundle, still trust the public roots. Empty when the host has none.
pub fn native_roots_pem() -> String {
    use base64::Engine as _;
    let mut out = String::new();
    for cert in rustls_native_certs::load_native_certs().certs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    if out.is_empty() {
        tracing::warn!(
            "no trust roots were found on the host: HTTPS from sandboxes trusts only each sandbox's egress CA"
        );
    }
    out
}

/// Adds the certificates of a PEM file to `roots` (which checks each), and returns them.
fn add_pem_roots(roots: &mut RootCertStore, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Root { path: path.to_owned(), reason };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    for c in &certs {
        roots.add(c.clone()).map_err(|e| err(e.to_string()))?;
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_native_roots_as_pem_parse_back_to_the_same_certificates() {
        let pem = native_roots_pem();
        let native: Vec<_> = rustls_native_certs::load_native_certs().certs;
        let parsed: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>().unwrap();
        assert_eq!(parsed, native);
    }

    #[test]
    fn leaves_chain_to_the_sandbox_ca() {
        let ca = SandboxCa::generate("t").unwrap();
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let a = ca.server_config("api.example.com").unwrap();
        assert!(Arc::ptr_eq(&a, &ca.server_config("api.example.com").unwrap()));
        ca.server_config("127.0.0.1").unwrap();
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }
}
