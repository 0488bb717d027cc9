//! `cargo xtask eval`: the evaluation corpus (tests/tests/evaluation.rs)
//! in its long form, the benign mix for 10 minutes, its figures written
//! to docs/EVALUATION.md with the commit they came from.

use anyhow::Context as _;

use crate::{cmd, test};

/// How long the benign mix runs in the long form.
const BENIGN_SECONDS: u64 = 600;

pub fn run() -> anyhow::Result<()> {
    let binary = test::build_agent()?;
    let root = cmd::workspace_root();
    let commit = cmd::output(
        "git rev-parse",
        cmd::command("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(&root),
    )?;
    let dirty = !cmd::output(
        "git status",
        cmd::command("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .current_dir(&root),
    )?
    .trim()
    .is_empty();
    let commit = format!(
        "{}{}",
        commit.trim(),
        if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        }
    );
    let report = root.join("docs/EVALUATION.md");
    cmd::status(
        "the evaluation corpus",
        cmd::cargo()
            .env("CROSSMON_BIN", &binary)
            .env("CROSSMON_EVAL_BENIGN_SECONDS", BENIGN_SECONDS.to_string())
            .env("CROSSMON_EVAL_REPORT", &report)
            .env("CROSSMON_EVAL_COMMIT", &commit)
            .args([
                "test",
                "-p",
                "integration-tests",
                "--test",
                "evaluation",
                "--",
            ])
            .args(["--test-threads=1", "--nocapture"]),
    )
    .with_context(|| format!("the corpus failed; {} has what it found", report.display()))?;
    println!("wrote {}", report.display());
    Ok(())
}
