//! The bench network: a Linux bridge with two network namespaces, each on a
//! veth whose host side is a bridge port, the shape of a Docker bridge
//! network. The bridge has no address, so the host does not route to it:
//! traffic stays between the two namespaces.
//!
//! Names start with `xmb-` (never the tests' `xm<pid>…`). One bench runs at
//! a time (see [`BenchLock`]), so the names are fixed and whatever carries
//! them when the lock is taken is the leftover of a bench that was killed.
//!
//! Nothing else is tuned: offloads (TSO/GSO on the veths) stay as a Docker
//! veth has them. Three quiet-making changes only: IPv6 off in the
//! namespaces and on the bench's bridge ports (no router solicitations or
//! MLD reports crossing the bridge mid-run), and permanent neighbour entries
//! (no ARP mid-run).

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::cmd;

pub const BRIDGE: &str = "xmb-br";

/// `10.214.0.0/24` exists only inside the two namespaces, so it collides
/// with nothing in the root namespace (the tests use `10.213.X.0/24`).
const SUBNET: [u8; 3] = [10, 214, 0];

/// The iptables rule a bridge needs once dockerd has run: Docker sets the
/// FORWARD policy to DROP, and with `br_netfilter` loaded bridged frames
/// pass that chain.
const FORWARD_RULE: [&str; 7] = ["FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"];

pub struct Host {
    pub netns: String,
    /// The host-side veth: a bridge port, where crossmon attaches.
    pub veth: String,
    pub addr: Ipv4Addr,
}

pub struct BenchNet {
    /// `[client, server]`: the workloads send from the first to the second.
    pub hosts: [Host; 2],
    /// Whether bridged frames pass iptables (`br_netfilter`), in every run
    /// alike: as on a Docker host.
    pub br_netfilter: bool,
    firewall_rule: bool,
}

fn host(i: u8) -> Host {
    Host {
        netns: format!("xmb-n{i}"),
        veth: format!("xmb-h{i}"),
        addr: Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], i + 2),
    }
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    cmd::output(
        &format!("ip {}", args.join(" ")),
        cmd::command("ip").args(args),
    )
}

/// Moves the calling thread into network namespace `netns` (created by
/// `ip netns add`). Only that thread: call it first thing in a thread of
/// its own, never on the main thread.
pub fn enter(netns: &str) -> anyhow::Result<()> {
    let path = format!("/run/netns/{netns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: a valid descriptor of a network namespace; setns changes only
    // the calling thread's namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering network namespace {netns}"));
    }
    Ok(())
}

/// Runs `f` on a thread inside `netns` and returns its result.
pub fn in_netns<T: Send>(
    netns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter(netns)?;
                f()
            })
            .join()
            .unwrap_or_else(|_| bail!("a thread in {netns} panicked"))
    })
}

/// Writes `/proc/sys/KEY`; the `net/` part follows the calling thread's
/// network namespace.
fn sysctl(key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/{key}");
    std::fs::write(&path, value).with_context(|| format!("writing {value} to {path}"))
}

/// Set in each namespace before its `eth0` exists.
const NETNS_SYSCTLS: [(&str, &str); 4] = [
    ("net/ipv6/conf/all/disable_ipv6", "1"),
    ("net/ipv6/conf/default/disable_ipv6", "1"),
    // Connection churn closes from the client side, which keeps each port
    // in TIME_WAIT for 60 s: reuse after 1 s (TCP timestamps make it safe)
    // and the whole port range, or the client runs out of ports in seconds.
    ("net/ipv4/tcp_tw_reuse", "1"),
    ("net/ipv4/ip_local_port_range", "1024 65535"),
];

impl BenchNet {
    pub fn create() -> anyhow::Result<Self> {
        let mut net = BenchNet {
            hosts: [host(0), host(1)],
            br_netfilter: std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
                .is_ok_and(|v| v.trim() == "1"),
            firewall_rule: false,
        };
        // Dropped (and so removed) if any step fails.
        net.build().context("creating the bench network")?;
        Ok(net)
    }

    fn build(&mut self) -> anyhow::Result<()> {
        ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        sysctl(&format!("net/ipv6/conf/{BRIDGE}/disable_ipv6"), "1")?;
        ip(&["link", "set", BRIDGE, "up"])?;
        for host in &self.hosts {
            ip(&["netns", "add", &host.netns])?;
            in_netns(&host.netns, || {
                NETNS_SYSCTLS
                    .iter()
                    .try_for_each(|(key, value)| sysctl(key, value))
            })?;
            ip(&[
                "link",
                "add",
                &host.veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &host.netns,
            ])?;
            sysctl(&format!("net/ipv6/conf/{}/disable_ipv6", host.veth), "1")?;
            ip(&["link", "set", &host.veth, "master", BRIDGE, "up"])?;
            let cidr = format!("{}/24", host.addr);
            ip(&["-n", &host.netns, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", &host.netns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &host.netns, "link", "set", "lo", "up"])?;
        }
        for (from, to) in [(0, 1), (1, 0)] {
            let (from, to) = (&self.hosts[from], &self.hosts[to]);
            // Not from /sys/class/net: sysfs shows the namespace it was
            // mounted in, whatever namespace the reading thread is in.
            let link = ip(&["-n", &to.netns, "-o", "link", "show", "dev", "eth0"])?;
            let mac = link
                .split_whitespace()
                .skip_while(|word| *word != "link/ether")
                .nth(1)
                .with_context(|| format!("no MAC address in `{}`", link.trim()))?;
            let addr = to.addr.to_string();
            ip(&[
                "-n",
                &from.netns,
                "neigh",
                "replace",
                &addr,
                "lladdr",
                mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])?;
        }
        if self.br_netfilter {
            cmd::status(
                "opening the FORWARD chain for the bench bridge",
                cmd::command("iptables").arg("-I").args(FORWARD_RULE),
            )?;
            self.firewall_rule = true;
        }
        self.wait_forwarding()
    }

    /// A new bridge port learns for a moment before it forwards; a
    /// workload must not start in that window.
    fn wait_forwarding(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let forwarding = self.hosts.iter().all(|host| {
                std::fs::read_to_string(format!("/sys/class/net/{}/brport/state", host.veth))
                    // 3 is BR_STATE_FORWARDING.
                    .is_ok_and(|state| state.trim() == "3")
            });
            if forwarding {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the bench bridge's ports did not reach the forwarding state in 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Removes what a killed bench left behind. Errors mean "not there".
    pub fn remove_leftovers() {
        // Each call removes one copy of the rule; a crashed bench left one.
        while Command::new("iptables")
            .env("PATH", cmd::search_path())
            .arg("-D")
            .args(FORWARD_RULE)
            .output()
            .is_ok_and(|out| out.status.success())
        {}
        for i in 0..2 {
            let host = host(i);
            let _ = ip(&["netns", "del", &host.netns]);
            let _ = ip(&["link", "del", &host.veth]);
        }
        let _ = ip(&["link", "del", BRIDGE]);
    }

    /// From now on the server answers datagrams to closed ports with ICMP
    /// port-unreachable once an hour (after at most the few of its initial
    /// burst) instead of once a second: each answer could otherwise be a
    /// new flow of its own when a full flow map has evicted the last one.
    pub fn quiet_icmp(&self) -> anyhow::Result<()> {
        in_netns(&self.server().netns, || {
            sysctl("net/ipv4/icmp_ratelimit", "3600000")
        })
    }

    pub fn client(&self) -> &Host {
        &self.hosts[0]
    }

    pub fn server(&self) -> &Host {
        &self.hosts[1]
    }

    /// Whether the bridge is in promiscuous mode: a libpcap monitor that has
    /// opened its capture on it.
    pub fn bridge_promiscuous() -> bool {
        const IFF_PROMISC: u32 = 0x100;
        std::fs::read_to_string(format!("/sys/class/net/{BRIDGE}/flags"))
            .ok()
            .and_then(|flags| u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).ok())
            .is_some_and(|flags| flags & IFF_PROMISC != 0)
    }
}

impl Drop for BenchNet {
    fn drop(&mut self) {
        if self.firewall_rule {
            let _ = cmd::command("iptables")
                .arg("-D")
                .args(FORWARD_RULE)
                .output();
        }
        for host in &self.hosts {
            // Deleting the namespace destroys eth0 and with it the pair.
            let _ = ip(&["netns", "del", &host.netns]);
            let _ = ip(&["link", "del", &host.veth]);
        }
        let _ = ip(&["link", "del", BRIDGE]);
    }
}
