//! TLS termination for HTTPS listeners: certificates, SNI selection, ALPN.
//!
//! Comes right after accept (`edge/mod.rs`) and before the HTTP connection (`edge/conn.rs`).
//! rustls with the aws-lc-rs provider; TLS 1.2 and 1.3; ALPN `h2` then `http/1.1`. SNI picks
//! a certificate by the names it holds (exact, then `*.` wildcard); unknown or absent SNI gets
//! the first certificate, which rustls's stock resolver does not do.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{CertSource, Tls, TlsVersion};

/// Install aws-lc-rs as the one crypto provider of the process, for rustls and for
/// jsonwebtoken. Called once at start (`main`); later calls change nothing.
pub fn install_default_providers() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
}

/// The one crypto provider of the process (aws-lc-rs), shared by rustls and the JWT code.
pub fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// A certificate chain with its key, ready to serve, and what the edge needs to know of it.
pub struct CertMaterial {
    pub certified: Arc<CertifiedKey>,
    /// Lower-case DNS names (and IP addresses) the leaf certificate is valid for.
    pub names: Vec<String>,
    /// The leaf's notAfter, seconds since the Unix epoch.
    pub not_after: i64,
    /// How operators name it in metrics: the file, or `self-signed`.
    pub label: String,
}

impl fmt::Debug for CertMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertMaterial")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// Read a PEM chain and its PEM key, check that they belong together.
pub fn load_files(cert: &Path, key: &Path) -> Result<CertMaterial, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM in certificate {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "no certificate found in {} (expected PEM \"BEGIN CERTIFICATE\")",
            cert.display()
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read private key {}: {e}", key.display()))?;
    material(chain, key_der, cert.display().to_string())
}

/// A fresh certificate for `localhost`, `127.0.0.1` and `::1` (demos and tests).
pub fn self_signed() -> Result<CertMaterial, String> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("cannot make a self-signed certificate: {e}"))?;
    let key = PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
    material(
        vec![generated.cert.der().clone()],
        key,
        "self-signed".to_string(),
    )
}

fn material(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    label: String,
) -> Result<CertMaterial, String> {
    let (names, not_after) = inspect(&chain[0])?;
    let certified = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| format!("{label}: certificate and key do not go together: {e}"))?;
    Ok(CertMaterial {
        certified: Arc::new(certified),
        names,
        not_after,
        label,
    })
}

/// The names a leaf certificate is valid for (SAN DNS names and IPs, else the subject CN),
/// and its expiry.
fn inspect(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("cannot parse certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => {
                        let b: [u8; 4] = [ip[0], ip[1], ip[2], ip[3]];
                        names.push(std::net::Ipv4Addr::from(b).to_string());
                    }
                    16 => {
                        let mut b = [0u8; 16];
                        b.copy_from_slice(ip);
                        names.push(std::net::Ipv6Addr::from(b).to_string());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

/// Chooses the certificate by SNI: exact name, then the `*.` wildcard one label up, then the
/// first certificate of the listener.
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SniResolver {
    /// Build from certificates in config order; the first is the default. A name held by two
    /// certificates goes to the first.
    pub fn new(certs: &[Arc<CertMaterial>]) -> Option<Self> {
        let default = certs.first()?.certified.clone();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for c in certs {
            for name in &c.names {
                if let Some(rest) = name.strip_prefix("*.") {
                    wildcard
                        .entry(rest.to_string())
                        .or_insert_with(|| c.certified.clone());
                } else {
                    exact
                        .entry(name.clone())
                        .or_insert_with(|| c.certified.clone());
                }
            }
        }
        Some(Self {
            exact,
            wildcard,
            default,
        })
    }

    fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(sni) = sni else {
            return self.default.clone();
        };
        // rustls hands SNI over already lower-cased and without a trailing dot.
        if let Some(c) = self.exact.get(sni) {
            return c.clone();
        }
        if let Some((_, parent)) = sni.split_once('.') {
            if let Some(c) = self.wildcard.get(parent) {
                return c.clone();
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// The rustls config of one HTTPS listener and the certificates it serves (for metrics).
pub fn server_config(tls: &Tls) -> Result<(Arc<ServerConfig>, Vec<Arc<CertMaterial>>), String> {
    let mut certs = Vec::with_capacity(tls.certs.len());
    for source in &tls.certs {
        certs.push(match source {
            CertSource::Files { material, .. } => material.clone(),
            CertSource::SelfSigned => Arc::new(self_signed()?),
        });
    }
    let resolver = SniResolver::new(&certs).ok_or("a TLS listener needs a certificate")?;
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Stateless TLS 1.3 tickets and a bounded session cache keep resumption cheap.
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    if let Ok(ticketer) = rustls::crypto::aws_lc_rs::Ticketer::new() {
        config.ticketer = ticketer;
    }
    Ok((Arc::new(config), certs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_for(names: &[&str]) -> Arc<CertMaterial> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let g = rcgen::generate_simple_self_signed(names).unwrap();
        let key = PrivateKeyDer::Pkcs8(g.signing_key.serialize_der().into());
        Arc::new(material(vec![g.cert.der().clone()], key, "test".into()).unwrap())
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_first() {
        let a = cert_for(&["a.example.com"]);
        let b = cert_for(&["b.example.com", "*.wild.example.com"]);
        let r = SniResolver::new(&[a.clone(), b.clone()]).unwrap();
        assert!(Arc::ptr_eq(&r.pick(Some("b.example.com")), &b.certified));
        assert!(Arc::ptr_eq(
            &r.pick(Some("x.wild.example.com")),
            &b.certified
        ));
        assert!(Arc::ptr_eq(
            &r.pick(Some("unknown.example.org")),
            &a.certified
        ));
        assert!(Arc::ptr_eq(&r.pick(None), &a.certified));
    }

    #[test]
    fn reads_names_and_expiry_of_a_certificate() {
        let c = cert_for(&["api.example.com", "127.0.0.1"]);
        assert_eq!(c.names, vec!["api.example.com", "127.0.0.1"]);
        assert!(c.not_after > 1_700_000_000);
    }

    #[test]
    fn refuses_a_key_that_belongs_to_another_certificate() {
        let g1 = rcgen::generate_simple_self_signed(vec!["a".to_string()]).unwrap();
        let g2 = rcgen::generate_simple_self_signed(vec!["b".to_string()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(g2.signing_key.serialize_der().into());
        let err = material(vec![g1.cert.der().clone()], key, "x".into()).unwrap_err();
        assert!(err.contains("do not go together"), "{err}");
    }
}
