//! `[tracing]` (span export) and `[access_log]` (format, fields, destination).

use std::path::PathBuf;

use http::{HeaderName, HeaderValue};
use toml::Spanned;

use super::super::file;
use super::super::{AccessLog, LogField, LogFormat, Tracing};
use super::*;

/// The fields of SPEC §8.1's default `fields` list.
const DEFAULT_FIELDS: [LogField; 15] = [
    LogField::Time,
    LogField::RequestId,
    LogField::TraceId,
    LogField::ClientIp,
    LogField::Method,
    LogField::Host,
    LogField::Path,
    LogField::Status,
    LogField::BytesSent,
    LogField::DurationMs,
    LogField::Route,
    LogField::Upstream,
    LogField::Target,
    LogField::UpstreamMs,
    LogField::UserAgent,
];

impl Validator<'_> {
    pub(super) fn tracing(&mut self, t: Option<&Spanned<file::TracingFile>>) -> Tracing {
        let defaults = Tracing::default();
        let Some(t) = t else {
            return defaults;
        };
        let tf = t.get_ref();
        let otlp_endpoint = tf.otlp_endpoint.as_ref().and_then(|e| {
            match e.get_ref().parse::<http::Uri>() {
                Ok(u)
                    if matches!(u.scheme_str(), Some("http") | Some("https"))
                        && u.authority().is_some() =>
                {
                    Some(u)
                }
                _ => {
                    self.error(
                        e.span(),
                        format!(
                            "otlp_endpoint {:?} is not an http:// or https:// URL (e.g. \"http://127.0.0.1:4318/v1/traces\")",
                            e.get_ref()
                        ),
                    );
                    None
                }
            }
        });
        let mut headers = Vec::new();
        if let Some(env) = &tf.headers_env {
            if let Some(value) = self.env(env, "OTLP export headers") {
                for pair in value.split(',').filter(|p| !p.trim().is_empty()) {
                    let parsed = pair.split_once('=').and_then(|(k, v)| {
                        Some((
                            HeaderName::from_bytes(k.trim().as_bytes()).ok()?,
                            HeaderValue::from_str(v.trim()).ok()?,
                        ))
                    });
                    match parsed {
                        Some(h) => headers.push(h),
                        // Never the value: it holds credentials.
                        None => self.error(
                            env.span(),
                            format!(
                                "environment variable {} is not a list of name=value headers separated by commas",
                                env.get_ref()
                            ),
                        ),
                    }
                }
            }
        }
        let service_name = match &tf.service_name {
            Some(s) if s.get_ref().trim().is_empty() => {
                self.error(s.span(), "service_name must not be empty");
                defaults.service_name
            }
            Some(s) => s.get_ref().clone(),
            None => defaults.service_name,
        };
        let sample_ratio = match &tf.sample_ratio {
            Some(r) if (0.0..=1.0).contains(r.get_ref()) => *r.get_ref(),
            Some(r) => {
                self.error(
                    r.span(),
                    format!("sample_ratio must be within 0.0..=1.0, not {}", r.get_ref()),
                );
                1.0
            }
            None => 1.0,
        };
        let max_queue = self.int_in(&tf.max_queue, 4096, 1..=1_000_000, "max_queue") as usize;
        Tracing {
            otlp_endpoint,
            headers,
            service_name,
            sample_ratio,
            max_queue,
        }
    }

    pub(super) fn access_log(
        &mut self,
        a: Option<&Spanned<file::AccessLogFile>>,
    ) -> Option<AccessLog> {
        let af = a?.get_ref();
        let format = match af.format.as_ref().map(|f| (f.get_ref().as_str(), f)) {
            None | Some(("json", _)) => LogFormat::Json,
            Some(("combined", _)) => LogFormat::Combined,
            Some((other, f)) => {
                self.error(
                    f.span(),
                    format!("format must be \"json\" or \"combined\", not {other:?}"),
                );
                LogFormat::Json
            }
        };
        let fields = match &af.fields {
            None => DEFAULT_FIELDS.to_vec(),
            Some(list) => {
                let mut out: Vec<LogField> = Vec::new();
                for f in list {
                    match LogField::parse(f.get_ref()) {
                        Some(field) if out.contains(&field) => {
                            self.error(f.span(), format!("field {:?} is listed twice", f.get_ref()))
                        }
                        Some(field) => out.push(field),
                        None => self.error(
                            f.span(),
                            format!(
                                "unknown access-log field {:?} (allowed: {})",
                                f.get_ref(),
                                LogField::ALL.map(LogField::name).join(", ")
                            ),
                        ),
                    }
                }
                out
            }
        };
        let path = af.path.as_ref().map(|p| {
            let path = PathBuf::from(p.get_ref());
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            if !dir.is_dir() {
                self.error(
                    p.span(),
                    format!(
                        "the directory of access-log path {:?} does not exist",
                        p.get_ref()
                    ),
                );
            }
            path
        });
        Some(AccessLog {
            format,
            fields,
            path,
        })
    }
}
