//! `--web-config`: TLS, client certificates, basic auth and extra response
//! headers of the HTTP API, in the file format of the Prometheus
//! exporter-toolkit (its `docs/web-configuration.md`), so one file can serve
//! every exporter of a host.
//!
//! Unlike exporter-toolkit, the file is read once, at start: a change needs
//! a restart, and a mistake stops the agent instead of failing requests.

mod basic_auth;
mod client_cert;
mod credential_tags;
mod file;
#[cfg(test)]
mod fixtures;
mod headers;
mod pem;
mod policy;
#[cfg(test)]
mod properties;
mod tls;

use std::{path::Path, sync::Arc};

use anyhow::{ensure, Context as _};
use axum_server::tls_rustls::RustlsConfig;
use rustls::ServerConfig;

use self::{
    basic_auth::BasicAuth, file::FileFormat, headers::response_headers, policy::HttpPolicy,
};

/// A loaded and checked `--web-config` file.
#[derive(Clone)]
pub struct WebConfig {
    /// `None`: plain HTTP.
    tls: Option<Arc<ServerConfig>>,
    /// `None`: nothing to check or add around requests.
    policy: Option<Arc<HttpPolicy>>,
}

/// Secrets stay out of debug output: only what is switched on.
impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("policy", &self.policy.is_some())
            .finish()
    }
}

impl WebConfig {
    /// Reads the file and everything it names (certificates, keys) and
    /// checks the password hashes, so that every mistake shows here.
    pub fn load(path: &Path) -> anyhow::Result<WebConfig> {
        Self::read(path).with_context(|| format!("--web-config {}", path.display()))
    }

    fn read(path: &Path) -> anyhow::Result<WebConfig> {
        let text = std::fs::read_to_string(path).context("reading the file")?;
        // An empty file, or one of comments only, is a config that changes
        // nothing (as in exporter-toolkit).
        let file: FileFormat = serde_yaml::from_str::<Option<FileFormat>>(&text)
            .context("invalid web config")?
            .unwrap_or_default();
        // Relative paths are relative to the file, as in exporter-toolkit.
        file.build(path.parent().unwrap_or(Path::new("")))
    }
}

impl FileFormat {
    fn build(self, dir: &Path) -> anyhow::Result<WebConfig> {
        ensure!(
            self.rate_limit.is_none(),
            "rate_limit is not supported by crossmon; remove it (a reverse proxy can limit rates)"
        );
        let http = self.http_server_config.unwrap_or_default();
        // As in exporter-toolkit: HTTP/2 by default, and only over TLS.
        let http2 = http.http2.unwrap_or(true);
        let tls = self
            .tls_server_config
            .map(|tls| tls.server_config(dir, http2))
            .transpose()
            .context("tls_server_config")?;
        let headers = response_headers(http.headers).context("http_server_config.headers")?;
        let basic_auth = BasicAuth::new(self.basic_auth_users).context("basic_auth_users")?;
        let policy = (!headers.is_empty() || basic_auth.is_some()).then(|| {
            Arc::new(HttpPolicy {
                headers,
                basic_auth,
            })
        });
        Ok(WebConfig { tls, policy })
    }
}

/// Serves `app` on `listener`: plain HTTP as `axum::serve` without a
/// config, else with the config's TLS, basic auth and headers.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    config: Option<WebConfig>,
) -> anyhow::Result<()> {
    let Some(config) = config else {
        return axum::serve(listener, app)
            .await
            .context("serving the HTTP API");
    };
    tracing::info!(
        tls = config.tls.is_some(),
        basic_auth_users = config
            .policy
            .as_ref()
            .and_then(|policy| policy.basic_auth.as_ref())
            .map_or(0, BasicAuth::user_count),
        "--web-config in effect"
    );
    let app = match config.policy {
        Some(policy) => app.layer(axum::middleware::from_fn_with_state(policy, policy::guard)),
        None => app,
    };
    let Some(tls) = config.tls else {
        return axum::serve(listener, app)
            .await
            .context("serving the HTTP API");
    };
    let listener = listener
        .into_std()
        .context("handing the listener to the TLS server")?;
    // axum-server handshakes in each connection's own task: a failed (or
    // 10 s slow) handshake drops that connection only, and accept errors
    // are retried, so the loop outlives bad clients.
    axum_server::from_tcp_rustls(listener, RustlsConfig::from_config(tls))
        .serve(app.into_make_service())
        .await
        .context("serving the HTTPS API")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{
        fixtures::{Scratch, TLS},
        WebConfig,
    };

    #[test]
    fn empty_files_and_sections_mean_plain_http() {
        let scratch = Scratch::new();
        for yaml in [
            "",
            "# nothing yet\n",
            "tls_server_config:\nbasic_auth_users: {}\n",
        ] {
            let config = scratch.load(yaml).expect(yaml);
            assert!(config.tls.is_none() && config.policy.is_none(), "{yaml:?}");
        }
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_file() {
        let scratch = Scratch::new();
        // The test runs elsewhere: only the file's directory has cert.pem.
        assert!(!Path::new("cert.pem").exists());
        let config = scratch.load(TLS).expect("relative paths");
        assert!(config.tls.is_some());
        let err = scratch.error("tls_server_config: {cert_file: missing.pem, key_file: key.pem}");
        let expected = scratch.0.join("missing.pem");
        assert!(
            err.contains(&format!("reading cert_file {}", expected.display())),
            "{err}"
        );
    }

    #[test]
    fn errors_name_the_file_and_the_unknown_key() {
        let scratch = Scratch::new();
        let err = scratch.error(&format!("{TLS}  cipher: fast\n"));
        assert!(
            err.starts_with(&format!(
                "--web-config {}",
                scratch.0.join("web.yml").display()
            )),
            "{err}"
        );
        assert!(err.contains("unknown field `cipher`"), "{err}");
        let err = scratch.error("basic_auth:\n  alice: x\n");
        assert!(err.contains("unknown field `basic_auth`"), "{err}");
        let err = scratch.error("tls_server_config: [\n");
        assert!(err.contains("invalid web config: tls_server_config: invalid type: sequence, expected a map of TLS settings"), "{err}");
        let err = format!(
            "{:#}",
            WebConfig::load(&scratch.0.join("absent.yml")).expect_err("absent")
        );
        assert!(err.contains("absent.yml: reading the file"), "{err}");
    }

    #[test]
    fn rate_limit_is_refused_by_name() {
        let scratch = Scratch::new();
        let err = scratch.error("rate_limit: {interval: 1s, burst: 20}\n");
        assert!(err.contains("rate_limit is not supported"), "{err}");
    }
}
