//! `[[listeners]]` (with their TLS) and `[limits]`: the edge's part of the file.

use std::collections::HashMap;
use std::sync::Arc;

use toml::Spanned;

use super::super::file::{self};
use super::super::{CertSource, EncodedSlashes, Limits, Listener, Tls, TlsVersion};
use super::*;
use crate::config::ClientAuth;

impl Validator<'_> {
    pub(super) fn listeners(
        &mut self,
        list: &[Spanned<file::ListenerFile>],
        no_trusted_proxies: bool,
    ) -> Vec<Listener> {
        let mut out = Vec::new();
        let mut names: HashMap<&str, ()> = HashMap::new();
        let mut addrs: HashMap<SocketAddr, String> = HashMap::new();
        if list.is_empty() {
            self.errors.push(Diag {
                span: Some(0..0),
                message: "no [[listeners]]: the gateway would serve nothing".into(),
            });
        }
        for l in list {
            let lf = l.get_ref();
            let name = lf.name.get_ref().as_str();
            if !valid_name(name) {
                self.error(lf.name.span(), bad_name_message("listener", name));
            }
            if names.insert(name, ()).is_some() {
                self.error(
                    lf.name.span(),
                    format!("listener name {name:?} is used twice"),
                );
            }
            let listen = self.socket_addr(&lf.listen, "listen");
            if let Some(addr) = listen {
                if addr.port() != 0 {
                    if let Some(other) = addrs.insert(addr, name.to_string()) {
                        self.error(
                            lf.listen.span(),
                            format!("listener {name:?} listens on {addr}, like listener {other:?}"),
                        );
                    }
                }
            }
            let proxy_protocol = lf.proxy_protocol.as_ref().is_some_and(|pp| *pp.get_ref());
            if let (Some(pp), true) = (&lf.proxy_protocol, proxy_protocol && no_trusted_proxies) {
                self.warn(
                    pp.span(),
                    "proxy_protocol is on but [server] trusted_proxies is empty: every connection must send a PROXY header, and none is believed (the TCP peer stays the client address)",
                );
            }
            let tls = lf.tls.as_ref().map(|t| self.tls(t));
            let redirect_https = lf.redirect_https.as_ref().map(|r| {
                if tls.is_some() {
                    self.error(
                        r.span(),
                        "redirect_https is for plain HTTP listeners; this one has tls",
                    );
                }
                self.int_in(&Some(r.clone()), 443, 1..=65535, "redirect_https") as u16
            });
            if let Some(listen) = listen {
                let h2c = lf.h2c.as_ref().is_some_and(|h| *h.get_ref());
                if let (Some(h), true) = (&lf.h2c, h2c && tls.is_some()) {
                    self.error(
                        h.span(),
                        "h2c is for plain listeners; a TLS listener offers HTTP/2 by ALPN",
                    );
                }
                out.push(Listener {
                    name: name.to_string(),
                    listen,
                    tls,
                    redirect_https,
                    proxy_protocol,
                    h2c,
                });
            }
        }
        out
    }

    pub(super) fn tls(&mut self, t: &Spanned<file::TlsFile>) -> Tls {
        let tf = t.get_ref();
        let min_version = match &tf.min_version {
            None => TlsVersion::V1_2,
            Some(v) => match v.get_ref().as_str() {
                "1.2" => TlsVersion::V1_2,
                "1.3" => TlsVersion::V1_3,
                other => {
                    self.error(
                        v.span(),
                        format!("min_version must be \"1.2\" or \"1.3\", not {other:?}"),
                    );
                    TlsVersion::V1_2
                }
            },
        };
        let self_signed = tf.self_signed.as_ref().is_some_and(|s| *s.get_ref());
        let mut certs = Vec::new();
        match (&tf.certs, self_signed) {
            (Some(list), true) if !list.is_empty() => {
                self.error(t.span(), "tls: use certs or self_signed = true, not both");
            }
            (_, true) => certs.push(CertSource::SelfSigned),
            (None, false) => self.error(
                t.span(),
                "tls needs certs = [{ cert = \"...pem\", key = \"...key\" }] or self_signed = true",
            ),
            (Some(list), false) => {
                if list.is_empty() {
                    self.error(t.span(), "tls certs is empty");
                }
                for c in list {
                    let cf = c.get_ref();
                    let cert = self.existing_file(&cf.cert, "certificate file");
                    let key = self.existing_file(&cf.key, "key file");
                    if let (Some(cert), Some(key)) = (cert, key) {
                        match crate::tls::load_files(&cert, &key) {
                            Ok(material) => certs.push(CertSource::Files {
                                cert,
                                key,
                                material: Arc::new(material),
                            }),
                            Err(e) => self.error(c.span(), e),
                        }
                    }
                }
            }
        }
        let client_auth = tf.client_auth.as_ref().and_then(|c| {
            let cf = c.get_ref();
            let path = self.existing_file(&cf.ca_file, "ca_file")?;
            let pem = std::fs::read(&path)
                .map_err(|e| self.error(cf.ca_file.span(), format!("ca_file: {e}")))
                .ok()?;
            if let Err(e) = crate::tls::client_verifier(&pem, true) {
                self.error(cf.ca_file.span(), format!("ca_file: {e}"));
                return None;
            }
            Some(ClientAuth {
                ca_file: path,
                ca_pem: pem,
                required: cf.required.as_ref().is_none_or(|r| *r.get_ref()),
            })
        });
        Tls {
            certs,
            min_version,
            client_auth,
        }
    }

    pub(super) fn limits(&mut self, l: &file::LimitsFile) -> Limits {
        let d = Limits::default();
        Limits {
            max_connections: self.int_in(
                &l.max_connections,
                d.max_connections as i64,
                1..=10_000_000,
                "max_connections",
            ) as usize,
            header_timeout: self.positive_duration(
                &l.header_timeout,
                d.header_timeout,
                "header_timeout",
            ),
            idle_timeout: self.positive_duration(&l.idle_timeout, d.idle_timeout, "idle_timeout"),
            max_header_bytes: {
                let n = self.size(
                    &l.max_header_bytes,
                    d.max_header_bytes as u64,
                    "max_header_bytes",
                );
                if n > 16 << 20 {
                    if let Some(s) = &l.max_header_bytes {
                        self.error(s.span(), "max_header_bytes must be at most 16MiB");
                    }
                }
                n.min(16 << 20) as usize
            },
            max_headers: self.int_in(
                &l.max_headers,
                d.max_headers as i64,
                1..=10_000,
                "max_headers",
            ) as usize,
            max_body_bytes: self.size(&l.max_body_bytes, d.max_body_bytes, "max_body_bytes"),
            h2_max_concurrent_streams: self.int_in(
                &l.h2_max_concurrent_streams,
                d.h2_max_concurrent_streams as i64,
                1..=100_000,
                "h2_max_concurrent_streams",
            ) as u32,
            encoded_slashes: match l
                .encoded_slashes
                .as_ref()
                .map(|s| (s.get_ref().as_str(), s))
            {
                None | Some(("reject", _)) => EncodedSlashes::Reject,
                Some(("keep", _)) => EncodedSlashes::Keep,
                Some((other, s)) => {
                    self.error(
                        s.span(),
                        format!("encoded_slashes must be \"reject\" or \"keep\", not {other:?}"),
                    );
                    EncodedSlashes::Reject
                }
            },
            body_timeout: self.positive_duration(&l.body_timeout, d.body_timeout, "body_timeout"),
            send_timeout: self.positive_duration(&l.send_timeout, d.send_timeout, "send_timeout"),
            max_buffered_bytes: self.size(
                &l.max_buffered_bytes,
                d.max_buffered_bytes,
                "max_buffered_bytes",
            ),
            h2_max_window_updates_per_data: self.int_in(
                &l.h2_max_window_updates_per_data,
                i64::from(d.h2_max_window_updates_per_data),
                0..=1_000_000,
                "h2_max_window_updates_per_data",
            ) as u32,
        }
    }
}
