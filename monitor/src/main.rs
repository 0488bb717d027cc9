use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use monitor::cli::{learn_config, CaptureArgs, Cli, Command, PolicyCommand};
use tracing_subscriber::EnvFilter;

/// netlink-packet-route warns about every attribute newer than itself, once
/// per link and listing; that is noise for operators.
const DEFAULT_LOG_FILTER: &str = "info,netlink_packet_route=error";

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in a log
        // file or journal.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("crossmon: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run(args) => match args.agent_config() {
            Ok(config) => runtime.block_on(monitor::agent::run(config)),
            // Bad configuration is a usage error, like a bad flag.
            Err(err) => {
                eprintln!("crossmon: {err:#}");
                return ExitCode::from(2);
            }
        },
        Command::Policy(PolicyCommand::Learn {
            duration,
            output,
            docker_host,
        }) => match learn_config(duration, &output, docker_host.as_deref()) {
            Ok(config) => runtime.block_on(monitor::agent::run(config)),
            Err(err) => {
                eprintln!("crossmon: {err:#}");
                return ExitCode::from(2);
            }
        },
        Command::Policy(PolicyCommand::Check { file, docker_host }) => {
            let policy = match monitor::policy::Policy::load(&file) {
                Ok(policy) => policy,
                Err(err) => {
                    eprintln!("crossmon: {err:#}");
                    return ExitCode::from(2);
                }
            };
            runtime
                .block_on(monitor::policy::check::run(&policy, docker_host.as_deref()))
                .map(|table| print!("{table}"))
        }
        Command::Capture(args) => return capture(&args),
        Command::Doctor { docker_host } => {
            return if runtime.block_on(monitor::doctor::run(docker_host.as_deref())) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("crossmon: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `crossmon capture`: every failure is one line and exit status 2.
fn capture(args: &CaptureArgs) -> ExitCode {
    let fail = |message: &dyn std::fmt::Display| {
        eprintln!("crossmon: {message}");
        ExitCode::from(2)
    };
    let (request, client) = match args.request() {
        Ok(pair) => pair,
        Err(message) => return fail(&message),
    };
    let to_stdout = args.write.as_os_str() == "-";
    let mut out: Box<dyn std::io::Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(monitor::capture::client::LazyFile::new(args.write.clone()))
    };
    match client.capture(&request, &mut out) {
        Ok(bytes) => {
            if !to_stdout {
                eprintln!(
                    "crossmon: {bytes} bytes of pcapng written to {}",
                    args.write.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(err) => fail(&err),
    }
}
