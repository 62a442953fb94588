//! `[upstreams.NAME]`: each upstream, its base URL and CA file, and which one is the default.

use std::collections::BTreeMap;
use std::path::Path;

use http::Uri;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::CertificateDer;

use super::Checker;
use crate::config::raw;
use crate::config::types::{ApiFlavor, CaFile, UpstreamConfig};

impl<'a> Checker<'a> {
    /// The upstreams and the name of the default one.
    pub(super) fn upstreams(&mut self) -> (BTreeMap<String, UpstreamConfig>, String) {
        const AT_LEAST_ONE: &str = "at least one upstream is required, e.g. [upstreams.openai]";
        let mut upstreams = BTreeMap::new();
        let doc = self.doc;
        let Some(value) = doc.get("upstreams") else {
            self.report(&["upstreams"], AT_LEAST_ONE);
            return (upstreams, String::new());
        };
        let Some(table) = self.named_tables(value, "upstreams") else {
            return (upstreams, String::new());
        };
        if table.is_empty() {
            self.report(&["upstreams"], AT_LEAST_ONE);
        }
        let mut marked = Vec::new();
        let mut all_read = true;
        for (name, value) in table.iter() {
            let name: &str = name.get_ref();
            let Some(raw) = self.section::<raw::Upstream>(value, &["upstreams", name]) else {
                all_read = false;
                continue;
            };
            if raw.default == Some(true) {
                marked.push(name);
            }
            if let Some(upstream) = self.upstream(name, raw) {
                upstreams.insert(name.to_owned(), upstream);
            }
        }

        let default_upstream = match marked.as_slice() {
            [one] => (*one).to_owned(),
            [] if table.len() == 1 => match upstreams.values_mut().next() {
                Some(only) => {
                    only.default = true;
                    only.name.clone()
                }
                None => String::new(),
            },
            [] => {
                if all_read && !table.is_empty() {
                    self.report(
                        &["upstreams"],
                        "no upstream has default = true: mark the one unmatched requests go to",
                    );
                }
                String::new()
            }
            many => {
                let list = many.join(", ");
                for name in many {
                    self.report(
                        &["upstreams", name, "default"],
                        format!("only one upstream can have default = true, but {list} do"),
                    );
                }
                String::new()
            }
        };
        (upstreams, default_upstream)
    }

    fn upstream(&mut self, name: &str, raw: raw::Upstream) -> Option<UpstreamConfig> {
        let before = self.problems.len();
        let base_url = match raw.base_url {
            Some(url) => self.base_url(&["upstreams", name, "base_url"], &url),
            None => {
                self.report(&["upstreams", name, "base_url"], "is required");
                None
            }
        };
        let api_key_env = self.env_name(&["upstreams", name, "api_key_env"], raw.api_key_env);
        let ca_file = raw.ca_file.and_then(|file| {
            let path = ["upstreams", name, "ca_file"];
            if base_url.as_ref().and_then(Uri::scheme_str) == Some("http") {
                self.report(&path, "only for https upstreams, but base_url is http://");
                return None;
            }
            let full = self.base_dir.join(file);
            match read_ca_file(&full) {
                Ok(certs) => Some(CaFile { path: full, certs }),
                Err(problem) => {
                    self.report(&path, problem);
                    None
                }
            }
        });
        if self.problems.len() != before {
            return None;
        }
        let base_url = base_url?;
        let api = raw.api.unwrap_or_else(|| {
            if base_url.host().is_some_and(|h| h.contains("anthropic")) {
                ApiFlavor::Anthropic
            } else {
                ApiFlavor::OpenAi
            }
        });
        Some(UpstreamConfig {
            name: name.to_owned(),
            base_url,
            api_key_env,
            default: raw.default.unwrap_or(false),
            api,
            ca_file,
        })
    }

    fn base_url(&mut self, path: &[&str], url: &str) -> Option<Uri> {
        let parsed = match url.parse::<Uri>() {
            Ok(uri) => uri,
            Err(e) => {
                self.report(path, format!("invalid URL {url:?}: {e}"));
                return None;
            }
        };
        let problem = match (parsed.scheme_str(), parsed.authority()) {
            (Some("http" | "https"), Some(authority)) if !authority.host().is_empty() => {
                if parsed.query().is_some() {
                    Some("must not have a query string")
                } else {
                    None
                }
            }
            (Some("http" | "https"), _) => Some("must have a host"),
            _ => Some("must start with http:// or https://"),
        };
        if let Some(problem) = problem {
            self.report(path, format!("{problem}, got {url:?}"));
            return None;
        }
        let trimmed = match parsed.path().trim_end_matches('/') {
            "" => "/",
            prefix => prefix,
        };
        if trimmed.len() == parsed.path().len() {
            return Some(parsed);
        }
        let scheme = parsed.scheme_str().unwrap_or_default();
        let authority = parsed.authority().map_or("", |a| a.as_str());
        match format!("{scheme}://{authority}{trimmed}").parse() {
            Ok(uri) => Some(uri),
            Err(e) => {
                self.report(path, format!("invalid URL {url:?}: {e}"));
                None
            }
        }
    }
}

/// The certificates of the PEM file at `path`: at least one, each usable as a trust anchor.
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read CA file {shown}: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            let why = match e {
                pem::Error::MissingSectionEnd { .. } => "a section has no END line".to_owned(),
                pem::Error::IllegalSectionStart { .. } => "malformed BEGIN line".to_owned(),
                other => other.to_string(),
            };
            format!("{shown} is not valid PEM: {why}")
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{shown} holds no certificate (expected PEM \"BEGIN CERTIFICATE\" sections)"
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        if roots.add(CertificateDer::from(cert.as_ref())).is_err() {
            let n = i + 1;
            return Err(format!(
                "certificate {n} of {shown} is not a valid X.509 certificate"
            ));
        }
    }
    Ok(certs)
}
