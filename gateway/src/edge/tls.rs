//! TLS termination for HTTPS listeners: certificates, SNI selection, ALPN.
//!
//! Comes right after accept (`edge/mod.rs`) and before the HTTP connection (`edge/conn.rs`).
//! rustls with the aws-lc-rs provider; TLS 1.2 and 1.3; ALPN `h2` then `http/1.1`. SNI picks
//! a certificate by the names it holds (exact, then `*.` wildcard); unknown or absent SNI gets
//! the first certificate, which rustls's stock resolver does not do.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::{CertSource, Tls, TlsVersion};
pub use crate::tls::{install_default_providers, load_files, provider, self_signed, CertMaterial};

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
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = match &tls.client_auth {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(
            crate::tls::client_verifier(&ca.ca_pem, ca.required)
                .map_err(|e| format!("client_auth ca_file: {e}"))?,
        ),
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
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
    use crate::tls::material;
    use rustls_pki_types::PrivateKeyDer;

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
