//! An image of the Prometheus server the tests run (`/usr/bin/prometheus`,
//! `cargo xtask setup`), for engines that cannot pull one: `FROM scratch`
//! with the binary and the shared libraries `ldd` says it loads, built in
//! the engine that runs it under the name deploy/swarm/stack.yml gives.

use std::{path::Path, process::Command};

use anyhow::{bail, Context as _};

use crate::{engine::NamespacedEngine, prometheus::PROMETHEUS, scratch::Scratch};

const STACK_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/swarm/stack.yml");

/// The image deploy/swarm/stack.yml's Prometheus service runs where
/// `PROMETHEUS_IMAGE` is not set: the default of its `${PROMETHEUS_IMAGE:-...}`.
pub fn stack_default() -> anyhow::Result<String> {
    let text = std::fs::read_to_string(STACK_FILE).context(STACK_FILE)?;
    let stack: serde_yaml::Value = serde_yaml::from_str(&text).context(STACK_FILE)?;
    let image = stack["services"]["prometheus"]["image"]
        .as_str()
        .context("no services.prometheus.image in the stack file")?;
    image
        .strip_prefix("${PROMETHEUS_IMAGE:-")
        .and_then(|rest| rest.strip_suffix('}'))
        .map(str::to_owned)
        .with_context(|| format!("{image}: not ${{PROMETHEUS_IMAGE:-<default>}}"))
}

/// Builds the image in `engine` as `tag`.
pub fn build_in(engine: &NamespacedEngine, tag: &str) -> anyhow::Result<()> {
    let context = Scratch::new("prometheus-image");
    let mut dockerfile = String::from("FROM scratch\n");
    for file in std::iter::once(PROMETHEUS.to_owned()).chain(libraries(PROMETHEUS)?) {
        let name = Path::new(&file)
            .file_name()
            .context("a file name")?
            .to_string_lossy()
            .into_owned();
        std::fs::copy(&file, context.path(&name)).with_context(|| format!("copying {file}"))?;
        dockerfile.push_str(&format!("COPY {name} {file}\n"));
    }
    dockerfile.push_str(&format!("ENTRYPOINT [\"{PROMETHEUS}\"]\n"));
    context.write("Dockerfile", &dockerfile);
    engine.docker(&[
        "build",
        "--quiet",
        "--tag",
        tag,
        &context.dir().display().to_string(),
    ])?;
    Ok(())
}

/// The shared objects `binary` loads, the dynamic loader included (every
/// absolute path in `ldd`'s answer).
fn libraries(binary: &str) -> anyhow::Result<Vec<String>> {
    let output = Command::new("ldd").arg(binary).output().context("ldd")?;
    if !output.status.success() {
        bail!("ldd {binary}: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter(|word| word.starts_with('/'))
        .map(str::to_owned)
        .collect())
}
