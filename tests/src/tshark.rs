//! Reading back a pcapng capture with tshark, and `crossmon capture`
//! against an agent's API: what the capture tests share.

use std::{net::SocketAddr, path::Path, process::Command};

use crate::{agent::get, crossmon_bin};

/// `frame.packet_flags_direction` of pcapng's epb_flags, as the container
/// sees it: sent to it, sent by it.
pub const IN: &str = "0x00000001";
pub const OUT: &str = "0x00000002";

/// `tshark -r FILE -T fields` of these fields, one packet a line.
pub const FIELDS: &[&str] = &[
    "frame.interface_name",
    "frame.packet_flags_direction",
    "ip.src",
    "ip.dst",
    "ip.proto",
    "udp.srcport",
    "udp.dstport",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.flags.str",
    "tcp.len",
    "frame.len",
    "frame.cap_len",
];

pub fn tshark(file: &Path) -> Vec<Vec<String>> {
    let mut command = Command::new("tshark");
    command
        .arg("-r")
        .arg(file)
        .args(["-T", "fields", "-E", "separator=|"]);
    for field in FIELDS {
        command.args(["-e", field]);
    }
    let output = command
        .output()
        .expect("running tshark (package tshark; `cargo xtask setup` installs it)");
    assert!(
        output.status.success(),
        "tshark -r {}: {}",
        file.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line.split('|').map(str::to_owned).collect())
        .collect()
}

/// `crossmon capture ARGS` against the agent at `addr`.
pub fn capture(addr: SocketAddr, args: &[&str]) -> Command {
    let mut command = Command::new(crossmon_bin());
    command
        .args(["capture", "--url", &format!("http://{addr}")])
        .args(args);
    command
}

/// `crossmon_captures_running` of the agent at `addr` (0 when it does
/// not answer).
pub fn running_captures(addr: SocketAddr) -> u64 {
    get(addr, "/metrics")
        .and_then(|(_, text)| {
            text.lines()
                .find_map(|l| l.strip_prefix("crossmon_captures_running "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}
