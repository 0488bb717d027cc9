//! A Linux bridge with hosts in their own network namespaces, each on a
//! veth whose host side is a bridge port: the shape of a Docker bridge
//! network. Removed on drop, also when a test panics.
//!
//! To make packet counts exact, every host gets permanent neighbour entries
//! (no ARP or neighbour discovery during a test), no IPv6 link-local address
//! and no duplicate address detection, and TCP without timestamps, SACK and
//! window scaling: every segment then carries a 20-byte TCP header, and
//! only SYN and SYN-ACK add the 4-byte MSS option. So a side that sent `s`
//! segments, one of them its SYN or SYN-ACK, and `p` payload bytes sent
//! `40 * s + 4 + p` IPv4 bytes.

use std::{
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context as _};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct TestNet {
    bridge: String,
    bridge_ifindex: u32,
    subnet: u8,
    hosts: Vec<Host>,
    firewall_rules: Vec<(&'static str, String)>,
}

pub struct Host {
    netns: String,
    veth: String,
    veth_ifindex: u32,
    ip4: Ipv4Addr,
    ip6: Ipv6Addr,
    mac: [u8; 6],
}

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<Output> {
    run(Command::new("ip").args(args))
}

fn run(command: &mut Command) -> anyhow::Result<Output> {
    let output = command
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

fn ifindex(netns: Option<&str>, name: &str) -> anyhow::Result<u32> {
    let mut args = vec![];
    if let Some(ns) = netns {
        args.extend(["-n", ns]);
    }
    args.extend(["-o", "link", "show", "dev", name]);
    let out = ip(&args)?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("no ifindex for {name}"))
}

fn mac_of(netns: Option<&str>, name: &str) -> anyhow::Result<[u8; 6]> {
    let path = format!("/sys/class/net/{name}/address");
    let text = match netns {
        Some(ns) => {
            String::from_utf8_lossy(&ip(&["netns", "exec", ns, "cat", &path])?.stdout).into_owned()
        }
        None => std::fs::read_to_string(&path)?,
    };
    let mut mac = [0u8; 6];
    for (byte, hex) in mac.iter_mut().zip(text.trim().split(':')) {
        *byte = u8::from_str_radix(hex, 16).context("parsing a MAC address")?;
    }
    Ok(mac)
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

impl TestNet {
    /// A bridge with `hosts` hosts (at most 200).
    pub fn new(hosts: usize) -> anyhow::Result<TestNet> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let prefix = format!("xm{}x{n}", pid % 10_000);
        // A subnet per net and process, so leftovers of a crashed run do not
        // collide with this one.
        let subnet = ((pid + n * 7) % 200 + 20) as u8;
        let mut net = TestNet {
            bridge: format!("{prefix}br"),
            bridge_ifindex: 0,
            subnet,
            hosts: Vec::new(),
            firewall_rules: Vec::new(),
        };
        net.build(&prefix, hosts)?;
        Ok(net)
    }

    fn build(&mut self, prefix: &str, hosts: usize) -> anyhow::Result<()> {
        let br = self.bridge.clone();
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", self.gateway_v4()),
            "dev",
            &br,
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/64", self.gateway_v6()),
            "dev",
            &br,
            "nodad",
        ])?;
        ip(&["link", "set", &br, "up"])?;
        self.bridge_ifindex = ifindex(None, &br)?;
        self.open_firewall();

        for i in 0..hosts {
            let netns = format!("{prefix}n{i}");
            let veth = format!("{prefix}h{i}");
            ip(&["netns", "add", &netns])?;
            // Registered before anything else can fail, so Drop removes it.
            self.hosts.push(Host {
                netns: netns.clone(),
                veth: veth.clone(),
                veth_ifindex: 0,
                ip4: Ipv4Addr::new(10, 213, self.subnet, i as u8 + 2),
                ip6: Ipv6Addr::new(
                    0xfd00,
                    0x213,
                    u16::from(self.subnet),
                    0,
                    0,
                    0,
                    0,
                    i as u16 + 2,
                ),
                mac: [0; 6],
            });
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ])?;
            ip(&["link", "set", &veth, "master", &br, "up"])?;
            for (key, value) in [
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
                ("net.ipv6.conf.eth0.accept_dad", "0"),
                ("net.ipv6.conf.eth0.addr_gen_mode", "1"),
                ("net.ipv6.conf.eth0.router_solicitations", "0"),
                ("net.ipv4.tcp_timestamps", "0"),
                ("net.ipv4.tcp_sack", "0"),
                ("net.ipv4.tcp_window_scaling", "0"),
            ] {
                ip(&[
                    "netns",
                    "exec",
                    &netns,
                    "sysctl",
                    "-qw",
                    &format!("{key}={value}"),
                ])?;
            }
            let host = &self.hosts[i];
            let (ip4, ip6) = (format!("{}/24", host.ip4), format!("{}/64", host.ip6));
            ip(&["-n", &netns, "addr", "add", &ip4, "dev", "eth0"])?;
            ip(&["-n", &netns, "addr", "add", &ip6, "dev", "eth0", "nodad"])?;
            ip(&["-n", &netns, "link", "set", "lo", "up"])?;
            ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
            let mac = mac_of(Some(&netns), "eth0")?;
            let veth_ifindex = ifindex(None, &veth)?;
            let host = &mut self.hosts[i];
            host.mac = mac;
            host.veth_ifindex = veth_ifindex;
        }
        self.pin_neighbours()
    }

    fn pin_neighbours(&self) -> anyhow::Result<()> {
        let bridge_mac = mac_text(mac_of(None, &self.bridge)?);
        let gateway = [self.gateway_v4().to_string(), self.gateway_v6().to_string()];
        for host in &self.hosts {
            for other in &self.hosts {
                if other.netns == host.netns {
                    continue;
                }
                for addr in [other.ip4.to_string(), other.ip6.to_string()] {
                    host.pin(&addr, &mac_text(other.mac))?;
                }
            }
            for addr in &gateway {
                host.pin(addr, &bridge_mac)?;
            }
            for addr in [host.ip4.to_string(), host.ip6.to_string()] {
                let mac = mac_text(host.mac);
                ip(&[
                    "neigh",
                    "replace",
                    &addr,
                    "lladdr",
                    &mac,
                    "dev",
                    &self.bridge,
                    "nud",
                    "permanent",
                ])?;
            }
        }
        Ok(())
    }

    /// Once dockerd has run, br_netfilter passes bridged frames through the
    /// iptables FORWARD chain, whose policy Docker sets to DROP: let this
    /// bridge's own traffic through, and only it.
    fn open_firewall(&mut self) {
        for tool in ["iptables", "ip6tables"] {
            let rule = [
                "FORWARD",
                "-i",
                &self.bridge,
                "-o",
                &self.bridge,
                "-j",
                "ACCEPT",
            ];
            if run(Command::new(tool).arg("-I").args(rule)).is_ok() {
                self.firewall_rules.push((tool, self.bridge.clone()));
            }
        }
    }

    pub fn bridge_name(&self) -> &str {
        &self.bridge
    }

    pub fn bridge_ifindex(&self) -> u32 {
        self.bridge_ifindex
    }

    pub fn gateway_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, 1)
    }

    pub fn gateway_v6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x213, u16::from(self.subnet), 0, 0, 0, 0, 1)
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end, and with it the peer.
        for host in &self.hosts {
            let _ = ip(&["netns", "del", &host.netns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
        for (tool, bridge) in &self.firewall_rules {
            let rule = ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"];
            let _ = run(Command::new(tool).arg("-D").args(rule));
        }
    }
}

impl Host {
    pub fn netns_name(&self) -> &str {
        &self.netns
    }

    /// The host-side veth, in the root namespace, a port of the bridge.
    pub fn veth_name(&self) -> &str {
        &self.veth
    }

    pub fn veth_ifindex(&self) -> u32 {
        self.veth_ifindex
    }

    pub fn ip4(&self) -> Ipv4Addr {
        self.ip4
    }

    pub fn ip6(&self) -> Ipv6Addr {
        self.ip6
    }

    /// MAC of `eth0` inside the namespace.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn pin(&self, addr: &str, mac: &str) -> anyhow::Result<()> {
        ip(&[
            "-n",
            &self.netns,
            "neigh",
            "replace",
            addr,
            "lladdr",
            mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])
        .map(drop)
    }

    /// Runs `f` on a thread inside this host's network namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
        in_netns(&format!("/var/run/netns/{}", self.netns), f)
    }

    /// `ip netns exec NETNS program args`, failing with stderr.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.netns, program])
            .args(args))
    }
}

/// Runs `f` on a thread that entered the network namespace at `path`
/// (`setns` changes only the calling thread). Sockets created there stay in
/// the namespace and may be used from any thread afterwards.
pub fn in_netns<T: Send>(
    path: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    let netns = File::open(path).with_context(|| format!("opening {path}"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: a valid namespace fd; affects this thread only.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("entering {path}"));
                }
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in {path} panicked"))?
    })
}
