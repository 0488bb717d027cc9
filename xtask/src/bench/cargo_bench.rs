//! Benches of the workspace's crates (`harness = false` programs printing
//! a Markdown table) that `cargo xtask bench` builds once and quotes.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::Context as _;

use crate::cmd;

/// Builds bench `bench` of `package` (release, like `cargo bench`) and
/// returns its executable.
pub fn build(package: &str, bench: &str) -> anyhow::Result<PathBuf> {
    let messages = cmd::output(
        &format!("building the {bench} bench"),
        cmd::cargo()
            .args(["bench", "--package", package, "--bench", bench])
            .args(["--no-run", "--message-format=json"])
            // Cargo's progress, as the agent's build shows it.
            .stderr(Stdio::inherit()),
    )?;
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|message| {
            message.pointer("/target/name").and_then(|n| n.as_str()) == Some(bench)
                && message.get("reason").and_then(|r| r.as_str()) == Some("compiler-artifact")
        })
        .and_then(|artifact| Some(PathBuf::from(artifact.get("executable")?.as_str()?)))
        .with_context(|| format!("cargo named no executable for the {bench} bench"))
}

/// Runs a built bench; what it printed.
pub fn table(executable: &Path) -> anyhow::Result<String> {
    cmd::output(
        &format!("the bench {}", executable.display()),
        &mut cmd::command(executable),
    )
}
