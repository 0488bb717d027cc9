//! Rebuild the programs when bpf-linker changes: cargo does not track the
//! linker, and an object linked by an old one can fail to load.
use std::process::ExitCode;

fn main() -> ExitCode {
    match which::which("bpf-linker") {
        Ok(linker) => {
            println!("cargo:rerun-if-changed={}", linker.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("bpf-linker not found ({err}): run `cargo xtask setup`");
            ExitCode::FAILURE
        }
    }
}
