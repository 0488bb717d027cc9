//! The middleware that applies `basic_auth_users` and
//! `http_server_config.headers` to every request.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{header, HeaderName, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse as _, Response},
};

use super::basic_auth::BasicAuth;

/// What `--web-config` checks and adds around every request.
pub(super) struct HttpPolicy {
    pub(super) headers: Vec<(HeaderName, HeaderValue)>,
    pub(super) basic_auth: Option<BasicAuth>,
}

/// Refuses requests without valid credentials, on every path, known or
/// not; adds the configured headers to every response, refusals included.
pub(super) async fn guard(
    State(policy): State<Arc<HttpPolicy>>,
    request: Request,
    next: Next,
) -> Response {
    let allowed = match &policy.basic_auth {
        Some(auth) => {
            auth.allows(request.headers().get(header::AUTHORIZATION))
                .await
        }
        None => true,
    };
    let mut response = if allowed {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, r#"Basic realm="crossmon""#)],
            "401 Unauthorized\n",
        )
            .into_response()
    };
    for (name, value) in &policy.headers {
        response.headers_mut().insert(name, value.clone());
    }
    response
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::super::{
        fixtures::{basic, Scratch},
        serve,
    };

    /// One HTTP/1.0 exchange on loopback: status line and headers.
    async fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    }

    #[tokio::test]
    async fn plain_http_with_basic_auth_guards_every_path_and_adds_headers() {
        let scratch = Scratch::new();
        let hash = bcrypt::hash("right", 4).expect("hash");
        let config = scratch
            .load(&format!(
                "basic_auth_users:\n  alice: '{hash}'\nhttp_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n"
            ))
            .expect("config");
        let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = tokio::spawn(serve(listener, app, Some(config)));

        let request = |path: &str, auth: Option<HeaderValue>| {
            let auth = auth.map_or(String::new(), |value| {
                format!("Authorization: {}\r\n", value.to_str().expect("ASCII"))
            });
            format!("GET {path} HTTP/1.0\r\n{auth}\r\n")
        };
        let denied = exchange(addr, &request("/healthz", None)).await;
        assert!(denied.starts_with("HTTP/1.0 401"), "{denied}");
        assert!(
            denied.contains("www-authenticate: Basic realm=\"crossmon\""),
            "{denied}"
        );
        assert!(
            denied.contains("x-content-type-options: nosniff"),
            "{denied}"
        );
        let unknown_path = exchange(addr, &request("/nowhere", None)).await;
        assert!(unknown_path.starts_with("HTTP/1.0 401"), "{unknown_path}");
        let wrong = exchange(addr, &request("/healthz", Some(basic("alice", "wrong")))).await;
        assert!(wrong.starts_with("HTTP/1.0 401"), "{wrong}");
        let allowed = exchange(addr, &request("/healthz", Some(basic("alice", "right")))).await;
        assert!(allowed.starts_with("HTTP/1.0 200"), "{allowed}");
        assert!(
            allowed.contains("x-content-type-options: nosniff") && allowed.ends_with("ok"),
            "{allowed}"
        );
        server.abort();
    }
}
