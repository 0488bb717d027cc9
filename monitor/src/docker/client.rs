//! Connecting to the engine.

use anyhow::Context as _;
use bollard::Docker;

/// Connects to `host` (`unix:///path`, `tcp://host:port`), or to
/// `$DOCKER_HOST`, or to the local socket, and agrees on an API version the
/// engine speaks (bollard's default is newer than older engines accept).
pub async fn connect(host: Option<&str>) -> anyhow::Result<Docker> {
    let docker = match host {
        Some(host) => Docker::connect_with_host(host),
        None => Docker::connect_with_defaults(),
    }
    .context("configuring the Docker client")?;
    docker
        .negotiate_version()
        .await
        .context("reaching the Docker engine")
}

/// Where [`connect`] goes for `host`, as operators write it: for log lines.
pub fn endpoint(host: Option<&str>) -> String {
    host.map(str::to_owned)
        .or_else(|| std::env::var("DOCKER_HOST").ok())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned())
}
