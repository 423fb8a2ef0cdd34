//! TLS and key material, one place for the whole process: the crypto provider (aws-lc-rs,
//! installed once), certificate and key loading, self-signed generation. Used by the edge
//! (termination, `edge/tls.rs`), the JWKS fetcher (`policy/jwt/source.rs`) and `config`
//! (which loads certificates while it validates).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

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
    /// SHA-256 of the private key's DER: a new key at the same path is a change (config diff),
    /// without keeping a second copy of the key around.
    pub key_der_hash: [u8; 32],
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

pub(crate) fn material(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    label: String,
) -> Result<CertMaterial, String> {
    let (names, not_after) = inspect(&chain[0])?;
    let mut key_der_hash = [0u8; 32];
    key_der_hash.copy_from_slice(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.secret_der()).as_ref(),
    );
    let certified = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| format!("{label}: certificate and key do not go together: {e}"))?;
    Ok(CertMaterial {
        certified: Arc::new(certified),
        names,
        not_after,
        label,
        key_der_hash,
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

/// What an upstream's TLS needs, read from its files.
pub struct ClientTlsFiles<'a> {
    /// PEM CA certificates; `None`: the system roots.
    pub ca: Option<&'a [u8]>,
    /// PEM client chain and key (mTLS).
    pub client: Option<(&'a [u8], &'a [u8])>,
    /// No verification at all (tests only).
    pub insecure_skip_verify: bool,
    /// ALPN protocols offered, in order.
    pub alpn: Vec<Vec<u8>>,
}

/// A rustls client config for an upstream, with the process's one crypto provider.
pub fn client_config(f: &ClientTlsFiles<'_>) -> Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = if f.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match f.ca {
            Some(pem) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("bad PEM in ca_file: {e}"))?;
                if certs.is_empty() {
                    return Err(
                        "no certificate in ca_file (expected PEM \"BEGIN CERTIFICATE\")".into(),
                    );
                }
                for c in certs {
                    roots.add(c).map_err(|e| format!("ca_file: {e}"))?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                for c in native.certs {
                    let _ = roots.add(c);
                }
                if roots.is_empty() {
                    return Err("no system root certificates found: set ca_file".into());
                }
            }
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match f.client {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("bad PEM in client_cert: {e}"))?;
            if chain.is_empty() {
                return Err("no certificate in client_cert".into());
            }
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| format!("bad PEM in client_key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client_cert and client_key do not go together: {e}"))?
        }
    };
    config.alpn_protocols = f.alpn.clone();
    Ok(config)
}

/// `insecure_skip_verify = true`: any certificate is accepted (signatures still checked so
/// the handshake completes). Tests only; `check` warns.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The verifier of client certificates at the edge: chains to the CA certificates in `pem`.
/// `required = false` still asks for a certificate and verifies one that is sent (an invalid
/// one fails the handshake), but lets a client without one in (routes decide).
pub fn client_verifier(
    pem: &[u8],
    required: bool,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate found (expected PEM \"BEGIN CERTIFICATE\")".into());
    }
    for c in certs {
        roots.add(c).map_err(|e| e.to_string())?;
    }
    let builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let builder = if required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder.build().map_err(|e| e.to_string())
}

/// A verified client certificate as the upstream sees it (SPEC §8.4): the subject in RFC 4514
/// form (as `openssl x509 -noout -subject -nameopt RFC2253` prints it) and the lower-case hex
/// SHA-256 of the DER.
pub fn client_identity(der: &[u8]) -> Option<(String, String)> {
    use std::fmt::Write;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut rdns: Vec<String> = Vec::new();
    for rdn in cert.subject().iter_rdn() {
        let parts: Vec<String> = rdn
            .iter()
            .map(|atv| {
                let oid = atv.attr_type();
                let name = match oid.to_id_string().as_str() {
                    "2.5.4.3" => "CN".to_string(),
                    "2.5.4.6" => "C".to_string(),
                    "2.5.4.7" => "L".to_string(),
                    "2.5.4.8" => "ST".to_string(),
                    "2.5.4.10" => "O".to_string(),
                    "2.5.4.11" => "OU".to_string(),
                    "2.5.4.9" => "street".to_string(),
                    "0.9.2342.19200300.100.1.25" => "DC".to_string(),
                    "0.9.2342.19200300.100.1.1" => "UID".to_string(),
                    "1.2.840.113549.1.9.1" => "emailAddress".to_string(),
                    other => other.to_string(),
                };
                let value = atv.as_str().map_or_else(
                    |_| {
                        let mut hex = String::from("#");
                        for b in atv.attr_value().data.iter() {
                            let _ = write!(hex, "{b:02x}");
                        }
                        hex
                    },
                    rfc4514_escape,
                );
                format!("{name}={value}")
            })
            .collect();
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let mut hex = String::with_capacity(64);
    for b in digest.as_ref() {
        let _ = write!(hex, "{b:02x}");
    }
    Some((rdns.join(","), hex))
}

/// RFC 4514 §2.4 escaping of an attribute value.
fn rfc4514_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_subjects_print_as_openssl_rfc2253_does() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CountryName, "DE");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Acme, Inc.");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "partner-7");
        let cert = params.self_signed(&key).unwrap();
        let (subject, sha) = client_identity(cert.der()).unwrap();
        // Last RDN first, `,` between, RFC 4514 escapes (`openssl x509 -nameopt RFC2253`).
        assert_eq!(subject, "CN=partner-7,O=Acme\\, Inc.,C=DE");
        assert_eq!(sha.len(), 64);
        assert!(sha
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }
}
