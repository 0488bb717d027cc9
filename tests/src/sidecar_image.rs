//! The sidecar image `cargo xtask image` builds (the static agent in the
//! root Dockerfile's runtime stage), built under a tag of the test's own
//! from the context `cargo xtask test` stages.

use std::path::{Path, PathBuf};

use crate::docker::{docker, unique};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The staged build context (`$CROSSMON_IMAGE_CONTEXT`, else
/// `target/image-context`). In CI its absence is a failure, elsewhere too:
/// the test says how to stage it.
pub fn context() -> PathBuf {
    let context = std::env::var_os("CROSSMON_IMAGE_CONTEXT").map_or_else(
        || Path::new(ROOT).join("target/image-context"),
        PathBuf::from,
    );
    assert!(
        context.join("crossmon").is_file() && context.join("Dockerfile").is_file(),
        "needs the sidecar image context in {} (`cargo xtask test` stages it, as `cargo xtask image` does)",
        context.display()
    );
    context
}

/// The image, built on the machine's engine; removed from it on drop.
pub struct SidecarImage(pub String);

impl SidecarImage {
    pub fn build() -> SidecarImage {
        let image = SidecarImage(format!("crossmon-test/sidecar:{}", unique("image")));
        docker(&[
            "build",
            "--quiet",
            "--tag",
            &image.0,
            &context().display().to_string(),
        ])
        .expect("building the sidecar image from the staged context");
        image
    }
}

impl Drop for SidecarImage {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "--force", &self.0]);
    }
}
