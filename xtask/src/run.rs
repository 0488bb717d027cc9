//! `cargo xtask run`: build the agent in release and become it.

use std::os::unix::process::CommandExt as _;

use anyhow::Context as _;

use crate::cmd;

pub fn agent(args: &[String]) -> anyhow::Result<()> {
    cmd::status(
        "building the agent",
        cmd::cargo().args([
            "build",
            "--release",
            "--package",
            "monitor",
            "--bin",
            "crossmon",
        ]),
    )?;
    let binary = cmd::workspace_root().join("target/release/crossmon");
    let default_args = ["run".to_owned()];
    let args = if args.is_empty() {
        &default_args[..]
    } else {
        args
    };
    // exec: signals (Ctrl-C, SIGTERM) reach the agent itself, which detaches
    // cleanly, and its exit status is ours.
    let err = std::process::Command::new(&binary).args(args).exec();
    Err(err).with_context(|| format!("starting {}", binary.display()))
}
