//! HTTP client settings shared by the scrape loops and the discovery
//! providers: Prometheus' `tls_config`, `basic_auth` and `authorization`.

use std::time::Duration;

use crate::config::{Authorization, BasicAuth, TlsConfig};

/// The User-Agent of every request.
pub(crate) const USER_AGENT: &str = concat!("tiermon/", env!("CARGO_PKG_VERSION"));

/// A client builder that trusts what `tls` says.
pub(crate) fn builder(tls: Option<&TlsConfig>) -> Result<reqwest::ClientBuilder, String> {
    let mut b = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .tcp_nodelay(true);
    if let Some(r) = crate::discovery::dns::HostResolver::configured() {
        b = b.dns_resolver(std::sync::Arc::new(r));
    }
    if let Some(tls) = tls {
        if tls.insecure_skip_verify {
            b = b.tls_danger_accept_invalid_certs(true);
        }
        if let Some(ca) = &tls.ca_file {
            let pem =
                std::fs::read(ca).map_err(|e| format!("reading ca_file {}: {e}", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("ca_file {}: {e}", ca.display()))?
            {
                b = b.add_root_certificate(cert);
            }
        }
    }
    Ok(b)
}

/// A client for a discovery provider's API.
pub(crate) fn discovery(tls: Option<&TlsConfig>) -> Result<reqwest::Client, String> {
    builder(tls)?
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())
}

/// Adds the credentials (read from their files now, so rotation works).
pub(crate) fn authorize(
    mut req: reqwest::RequestBuilder,
    basic: Option<&BasicAuth>,
    authorization: Option<&Authorization>,
) -> Result<reqwest::RequestBuilder, String> {
    if let Some(b) = basic {
        let password = match &b.password_file {
            Some(f) => std::fs::read_to_string(f)
                .map_err(|e| format!("reading basic_auth.password_file {}: {e}", f.display()))?
                .trim()
                .to_owned(),
            None => b.password.clone(),
        };
        req = req.basic_auth(&b.username, Some(password));
    }
    if let Some(a) = authorization {
        let cred = match &a.credentials_file {
            Some(f) => std::fs::read_to_string(f)
                .map_err(|e| {
                    format!(
                        "reading authorization.credentials_file {}: {e}",
                        f.display()
                    )
                })?
                .trim()
                .to_owned(),
            None => a.credentials.clone(),
        };
        req = req.header(reqwest::header::AUTHORIZATION, format!("{} {cred}", a.kind));
    }
    Ok(req)
}

/// `base` with these query parameters added.
pub(crate) fn with_query(base: &str, query: &[(&str, String)]) -> Result<url::Url, String> {
    let mut url = url::Url::parse(base).map_err(|e| format!("{base:?}: {e}"))?;
    if !query.is_empty() {
        url.query_pairs_mut()
            .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
    }
    Ok(url)
}

/// An error with its causes, `: `-separated (reqwest's and hyper's own
/// messages name only the outermost).
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}
