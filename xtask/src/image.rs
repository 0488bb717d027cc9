//! `cargo xtask image`: the sidecar image without any registry. The agent
//! is built here, static, and wrapped in the root Dockerfile's runtime stage
//! (`FROM scratch`), taken from that file as it is so the two never drift.

use std::{fs, path::PathBuf};

use anyhow::{bail, Context as _};

use crate::cmd;

pub const DEFAULT_TAG: &str = "crossmon:dev";

/// The static build: also the root Dockerfile's builder stage, which a test
/// below holds to these two.
const TARGET: &str = "x86_64-unknown-linux-gnu";
const STATIC_RUSTFLAGS: &str = "-C target-feature=+crt-static";

/// The first line of the runtime stage in the root Dockerfile; the stage
/// runs to the end of the file.
const RUNTIME_STAGE: &str = "FROM scratch AS runtime";

/// Builds the static agent and stages a build context with it and the
/// runtime stage, then `docker build`s it as `tag`.
pub fn build(tag: &str) -> anyhow::Result<()> {
    let context = stage_context()?;
    // Staging needs no engine; `docker build` does.
    if cmd::output("docker info", cmd::command("docker").args(["info"])).is_err() {
        bail!(
            "no Docker engine answers (`docker info` failed): start dockerd, then run \
             `cargo xtask image` again; the build context is ready in {}",
            context.display()
        );
    }
    println!("==> docker build --tag {tag}");
    cmd::status(
        "docker build",
        cmd::command("docker")
            .args(["build", "--tag", tag])
            .arg(&context),
    )?;
    println!("image {tag} built; run it as the README's \"Quick start\" says");
    Ok(())
}

/// Where the staged build context goes (a `docker build` argument).
pub fn context_dir() -> PathBuf {
    cmd::target_dir().join("image-context")
}

/// Builds the static agent and writes `context_dir()`: the binary and a
/// Dockerfile whose first stage takes it from the context instead of
/// building it. Needs no engine.
pub fn stage_context() -> anyhow::Result<PathBuf> {
    println!("==> build crossmon (release, static, {TARGET})");
    // A target-specific RUSTFLAGS reaches the agent and its dependencies but
    // not build scripts and proc-macros (built for the host, dynamically),
    // nor the eBPF build monitor's build.rs starts for the bpfel target.
    let rustflags_var = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        TARGET.to_uppercase().replace('-', "_")
    );
    cmd::status(
        "building the static agent",
        cmd::cargo()
            .env(rustflags_var, STATIC_RUSTFLAGS)
            .args(["build", "--release", "--package", "monitor"])
            .args(["--bin", "crossmon", "--target", TARGET]),
    )?;
    let binary = cmd::target_dir().join(TARGET).join("release/crossmon");
    let root_dockerfile = cmd::workspace_root().join("Dockerfile");
    let dockerfile = fs::read_to_string(&root_dockerfile)
        .with_context(|| format!("reading {}", root_dockerfile.display()))?;
    let context = context_dir();
    // Stale files from an earlier staging would enter the context.
    if context.exists() {
        fs::remove_dir_all(&context).with_context(|| format!("clearing {}", context.display()))?;
    }
    fs::create_dir_all(&context).with_context(|| format!("creating {}", context.display()))?;
    fs::copy(&binary, context.join("crossmon"))
        .with_context(|| format!("copying {}", binary.display()))?;
    fs::write(context.join("Dockerfile"), local_dockerfile(&dockerfile)?)
        .context("writing the staged Dockerfile")?;
    Ok(context)
}

/// The runtime stage of `root` (the root Dockerfile), after a stage named
/// as root's builder (`binary`) that takes `/crossmon` from the context.
fn local_dockerfile(root: &str) -> anyhow::Result<String> {
    let start = root
        .lines()
        .position(|line| line.trim() == RUNTIME_STAGE)
        .with_context(|| format!("the root Dockerfile has no `{RUNTIME_STAGE}` line"))?;
    let stage: Vec<&str> = root.lines().skip(start).collect();
    if stage[1..].iter().any(|line| line.starts_with("FROM ")) {
        bail!("`{RUNTIME_STAGE}` must be the last stage of the root Dockerfile");
    }
    Ok(format!(
        "# Staged by `cargo xtask image`: the root Dockerfile's runtime stage,\n\
         # around a binary built on the host.\n\
         FROM scratch AS binary\n\
         COPY crossmon /crossmon\n\n\
         {}\n",
        stage.join("\n")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_dockerfile() -> anyhow::Result<String> {
        Ok(fs::read_to_string(
            cmd::workspace_root().join("Dockerfile"),
        )?)
    }

    #[test]
    fn the_staged_dockerfile_is_the_root_runtime_stage_as_it_is() -> anyhow::Result<()> {
        let root = root_dockerfile()?;
        let staged = local_dockerfile(&root)?;
        let start = root
            .find(&format!("\n{RUNTIME_STAGE}\n"))
            .context("no runtime stage")?;
        let stage = &root[start + 1..];
        assert!(staged.ends_with(stage), "{staged}");
        assert!(stage.contains("COPY --from=binary /crossmon /crossmon"));
        assert!(root.contains(" AS binary\n"));
        Ok(())
    }

    #[test]
    fn the_root_dockerfile_builds_the_binary_as_this_task_does() -> anyhow::Result<()> {
        let root = root_dockerfile()?;
        assert!(root.contains(&format!("--target {TARGET}")));
        assert!(root.contains(&format!("RUSTFLAGS=\"{STATIC_RUSTFLAGS}\"")));
        Ok(())
    }

    #[test]
    fn a_later_stage_is_refused() {
        let root = format!("{RUNTIME_STAGE}\nCOPY a b\nFROM scratch AS other\n");
        assert!(local_dockerfile(&root).is_err());
        assert!(local_dockerfile("FROM scratch\n").is_err());
    }
}
