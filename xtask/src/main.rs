//! Project tasks: set-up, running the agent, the test tiers, the bench,
//! the sidecar image.

mod bench;
mod cmd;
mod eval;
mod image;
mod run;
mod setup;
mod test;
mod totals;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "crossmon's build, run and test tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent, fast when done).
    Setup,
    /// Set up, build the agent in release and run it with the given arguments.
    Run {
        /// Arguments for `crossmon` (default: `run`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run every test tier, the VM kernels beside the host's tests.
    Test {
        /// Run only the VM tier, on this kernel (repeat for more); set-up
        /// and the build included, the host's tiers skipped.
        #[arg(long = "kernel", value_enum)]
        kernels: Vec<vm::Kernel>,
        /// Passed to `cargo test` (a test-name filter, for instance).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Formatting and clippy on the host crates and the eBPF crate.
    Lint,
    /// Set up, then run the evaluation corpus in its long form (the benign
    /// mix for 10 minutes) and write docs/EVALUATION.md.
    Eval,
    /// Set up, build the agent static and the sidecar image around it
    /// (`FROM scratch`, no registry needed; a Docker engine must run).
    Image {
        #[arg(long, default_value = image::DEFAULT_TAG)]
        tag: String,
    },
    /// Set up, then measure what crossmon costs the traffic it watches,
    /// next to no monitor, tcpdump and softflowd, then what the agent
    /// itself costs and how many new flows a second its events carry;
    /// writes BENCHMARKS.md.
    Bench {
        /// Repetitions of every monitor and workload (at least 5 for
        /// BENCHMARKS.md; fewer only print the table).
        #[arg(long, default_value_t = 5)]
        repetitions: usize,
        /// Measured seconds of each workload run.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Measured seconds of each run of the per-program cost pass.
        #[arg(long, default_value_t = 2)]
        cost_seconds: u64,
        /// Run one pass only, and only print (BENCHMARKS.md is left as it
        /// is).
        #[arg(long, value_enum)]
        only: Option<bench::Pass>,
        /// Run this workload only (repeat for more); only prints.
        #[arg(long = "workload", value_enum)]
        workloads: Vec<bench::Workload>,
        /// Run this monitor only, by its name in the table (repeat for
        /// more); only prints.
        #[arg(long = "monitor")]
        monitors: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Run { args } => {
            setup::run()?;
            run::agent(&args)
        }
        Task::Test { kernels, args } => {
            setup::run()?;
            test::all(&args, &kernels)
        }
        Task::Lint => {
            setup::run()?;
            test::lint()
        }
        Task::Eval => {
            setup::run()?;
            eval::run()
        }
        Task::Image { tag } => {
            setup::run()?;
            image::build(&tag)
        }
        Task::Bench {
            repetitions,
            seconds,
            cost_seconds,
            only,
            workloads,
            monitors,
        } => {
            setup::run()?;
            bench::run(&bench::Options {
                repetitions,
                seconds,
                cost_seconds,
                only,
                workloads,
                monitors,
            })
        }
    }
}
