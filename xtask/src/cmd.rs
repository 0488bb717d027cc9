//! Child commands: the workspace as working directory, a PATH that finds the
//! toolchain and the system tools, and errors that name the step.

use std::{
    env,
    ffi::OsString,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

/// Where `ip`, `iptables`, `tcpdump` and `bpftool` live. A root shell
/// entered with `su` (no `-`) or a bare CI runner may lack the sbin ones.
const SYSTEM_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

pub fn workspace_root() -> PathBuf {
    // xtask lives one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Cargo's target directory as the children see it: they run in the
/// workspace root, so a relative `CARGO_TARGET_DIR` is relative to it.
pub fn target_dir() -> PathBuf {
    workspace_root().join(env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into()))
}

/// Where `cargo install` puts binaries (bpf-linker) and rustup its proxies.
pub fn cargo_bin() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .map(|home| home.join("bin"))
}

/// The PATH every child gets: cargo's bin directory first, so the
/// bpf-linker that setup built wins over any other, then the inherited
/// entries, then the system directories that are missing.
pub fn search_path() -> OsString {
    let inherited = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = cargo_bin().into_iter().collect();
    let others = env::split_paths(&inherited).chain(SYSTEM_DIRS.iter().map(PathBuf::from));
    for dir in others {
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    // Fails only when an entry holds a ':'; the inherited PATH still works.
    env::join_paths(dirs).unwrap_or(inherited)
}

/// The first executable `name` on [`search_path`].
pub fn find_program(name: &str) -> Option<PathBuf> {
    env::split_paths(&search_path())
        .map(|dir| dir.join(name))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// `program`, run in the workspace root with [`search_path`]. On Unix the
/// program itself is looked up in that PATH too.
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    command
        .current_dir(workspace_root())
        .env("PATH", search_path());
    command
}

/// `cargo` as the user invoked it (`$CARGO`: the active toolchain's own
/// binary).
pub fn cargo() -> Command {
    command(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The nightly cargo. `$CARGO` is the stable toolchain's own binary, which
/// does not understand `+nightly`; `rustup run` is the proxy-free spelling.
pub fn nightly_cargo() -> Command {
    let mut command = command("rustup");
    command.args(["run", "nightly", "cargo"]);
    command
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
