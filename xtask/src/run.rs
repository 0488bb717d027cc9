//! `cargo xtask run`: build the agent in release and become it.

use std::os::unix::process::CommandExt as _;

use anyhow::Context as _;

use crate::cmd;

/// What `cargo xtask run` with no arguments runs: `crossmon run`.
const DEFAULT_ARGS: &[&str] = &["run"];

pub fn agent(args: &[String]) -> anyhow::Result<()> {
    println!("==> build crossmon (release)");
    // monitor's build.rs builds the eBPF object (nightly, through aya-build)
    // and the agent embeds it.
    cmd::status(
        "building the agent",
        cmd::cargo().args(["build", "--release", "--package", "monitor"]),
    )?;
    let binary = cmd::target_dir().join("release/crossmon");
    let mut agent = cmd::command(&binary);
    if args.is_empty() {
        agent.args(DEFAULT_ARGS);
    } else {
        agent.args(args);
    }
    // The agent runs from where the user stood, not the workspace root:
    // relative paths in its arguments mean what they meant to them.
    if let Ok(dir) = std::env::current_dir() {
        agent.current_dir(dir);
    }
    // exec: Ctrl-C and SIGTERM reach the agent itself, which detaches its
    // programs cleanly, and its exit status is ours. Returns only on error.
    let err = agent.exec();
    Err(err).with_context(|| format!("starting {}", binary.display()))
}
