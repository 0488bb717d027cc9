//! Running commands with the workspace as working directory.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

pub fn workspace_root() -> PathBuf {
    // xtask lives one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// `cargo` as the user invoked it, with ~/.cargo/bin on PATH so children
/// (rustup, bpf-linker) are found even under a minimal CI environment.
pub fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .current_dir(workspace_root())
        .env("PATH", path_with_cargo_bin());
    command
}

/// The nightly cargo, through rustup: `$CARGO` is the stable toolchain's
/// own binary, which does not understand `+nightly`.
pub fn nightly_cargo() -> Command {
    let mut command = Command::new("rustup");
    command
        .args(["run", "nightly", "cargo"])
        .current_dir(workspace_root())
        .env("PATH", path_with_cargo_bin())
        .env_remove("RUSTUP_TOOLCHAIN");
    command
}

pub fn path_with_cargo_bin() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    match std::env::var("HOME") {
        Ok(home) if !path.split(':').any(|p| p == format!("{home}/.cargo/bin")) => {
            format!("{home}/.cargo/bin:{path}")
        }
        _ => path,
    }
}

/// Runs `command`, failing with `what` when it cannot start or fails.
pub fn status(what: &str, command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("{what}: cannot start {command:?}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Runs `command` and returns its standard output.
pub fn output(what: &str, command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("{what}: cannot start {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
