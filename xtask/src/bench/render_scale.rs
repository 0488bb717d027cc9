//! `/metrics` render time and size at 1k, 10k and 50k series, as
//! `monitor/benches/metrics_scale.rs` measures them with the agent's own
//! labelling and rendering code (no kernel, no HTTP). Built with the agent,
//! run in the agent pass, its table kept as it prints it.

use std::path::{Path, PathBuf};

use super::cargo_bench;

const BENCH: &str = "metrics_scale";

/// Builds the bench (release, like `cargo bench`) and returns its
/// executable.
pub fn build() -> anyhow::Result<PathBuf> {
    cargo_bench::build("monitor", BENCH)
}

/// The bench's Markdown table: series, `/metrics` bytes, render time,
/// update per poll, RSS.
pub struct RenderScale {
    pub table: String,
}

pub fn run(executable: &Path) -> anyhow::Result<RenderScale> {
    Ok(RenderScale {
        table: cargo_bench::table(executable)?,
    })
}

impl RenderScale {
    /// The render time at `series` series, in ms.
    pub fn render_ms(&self, series: u64) -> Option<f64> {
        self.table.lines().find_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            // ["", series, bytes, render, update, RSS, ""]
            (cells.get(1)?.parse::<u64>().ok()? == series)
                .then(|| cells.get(3)?.strip_suffix(" ms")?.parse().ok())
                .flatten()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_time_of_a_row() {
        let scale = RenderScale {
            table: "| series | /metrics bytes | render (median of 5) | update per poll | RSS |\n\
                    |---:|---:|---:|---:|---:|\n\
                    | 1000 | 301234 | 1.5 ms | 0.8 ms | 10.0 MiB (+1.0) |\n\
                    | 10000 | 3012345 | 14.2 ms | 8.1 ms | 30.0 MiB (+20.0) |\n"
                .to_owned(),
        };
        assert_eq!(scale.render_ms(10_000), Some(14.2));
        assert_eq!(scale.render_ms(1_000), Some(1.5));
        assert_eq!(scale.render_ms(50_000), None);
    }
}
