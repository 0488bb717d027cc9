//! A Linux bridge with hosts in their own network namespaces, each on a
//! veth whose host side is a bridge port: the shape of a Docker bridge
//! network. Removed on drop, also when a test panics.
//!
//! Addresses: `10.213.X.0/24` and `fd00:213:X::/64` with `X` unique among
//! the subnets in use on this machine; the bridge (Docker's gateway) is
//! `.1`/`::1`, host `i` is `.(i + 2)`/`::(i + 2)`. Names are `xm`, the
//! process id (base 36) and a per-process counter, then `br` (the bridge),
//! `h<i>` (host `i`'s veth in the root namespace) or `n<i>` (its network
//! namespace): within the 15 bytes of an interface name, and never equal to
//! another run's.
//!
//! To make packet counts exact, nothing but a test's own traffic crosses
//! the bridge once [`TestNet::new`] returns:
//! - every host and the bridge get permanent neighbour entries for each
//!   other, v4 and v6: no ARP or neighbour discovery during a test;
//! - no IPv6 link-local address on `eth0` or the bridge, and IPv6 disabled
//!   on the host-side veths (plain bridge ports): no duplicate address
//!   detection and no router solicitations, which otherwise go out of
//!   every port from about 1 s after setup on, every 4 s;
//! - IGMP and MLD reports, sent whenever an interface joins a group (its
//!   solicited-node group, say), are repeated after 10 ms instead of up to
//!   1 s, and `new` waits until the bridge has been silent for a while;
//! - TCP without timestamps, SACK and window scaling: every segment
//!   carries a 20-byte TCP header, and only SYN and SYN-ACK add the 4-byte
//!   MSS option. So a side that sent `s` segments, one of them its SYN or
//!   SYN-ACK, and `p` payload bytes sent `40 * s + 4 + p` IPv4 bytes, or
//!   `60 * s + 4 + p` IPv6 bytes (see [`crate::traffic::TcpSide`]).
//!
//! Once dockerd has run on the machine, `br_netfilter` passes bridged
//! frames through iptables (see [`TestNet`]'s firewall rules) and drops
//! malformed IPv4 (bad IHL, header cut short) and IPv4 fragments held for
//! reassembly before they reach the other port.

use std::{
    fs::File,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};

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

/// Interface names hold at most `IFNAMSIZ - 1` bytes.
const MAX_IFNAME: usize = 15;

/// How long the bridge and its ports must carry nothing before a new net is
/// handed out: the last IGMP/MLD report comes within 10 ms of the last
/// interface coming up (see the module doc).
const QUIET: Duration = Duration::from_millis(150);

/// Set inside each namespace before `eth0` comes up; why: see the module doc.
const HOST_SYSCTLS: [(&str, &str); 14] = [
    ("net/ipv6/conf/all/accept_dad", "0"),
    ("net/ipv6/conf/default/accept_dad", "0"),
    ("net/ipv6/conf/eth0/accept_dad", "0"),
    ("net/ipv6/conf/eth0/addr_gen_mode", "1"),
    ("net/ipv6/conf/all/router_solicitations", "0"),
    ("net/ipv6/conf/default/router_solicitations", "0"),
    ("net/ipv6/conf/eth0/router_solicitations", "0"),
    ("net/ipv6/conf/eth0/mldv1_unsolicited_report_interval", "10"),
    ("net/ipv6/conf/eth0/mldv2_unsolicited_report_interval", "10"),
    (
        "net/ipv4/conf/eth0/igmpv2_unsolicited_report_interval",
        "10",
    ),
    (
        "net/ipv4/conf/eth0/igmpv3_unsolicited_report_interval",
        "10",
    ),
    ("net/ipv4/tcp_timestamps", "0"),
    ("net/ipv4/tcp_sack", "0"),
    ("net/ipv4/tcp_window_scaling", "0"),
];

/// The same for the bridge, in the root namespace (`{}` is its name). It
/// keeps IPv6 for the gateway address, without a link-local one.
const BRIDGE_SYSCTLS: [(&str, &str); 7] = [
    ("net/ipv6/conf/{}/addr_gen_mode", "1"),
    ("net/ipv6/conf/{}/accept_dad", "0"),
    ("net/ipv6/conf/{}/router_solicitations", "0"),
    ("net/ipv6/conf/{}/mldv1_unsolicited_report_interval", "10"),
    ("net/ipv6/conf/{}/mldv2_unsolicited_report_interval", "10"),
    ("net/ipv4/conf/{}/igmpv2_unsolicited_report_interval", "10"),
    ("net/ipv4/conf/{}/igmpv3_unsolicited_report_interval", "10"),
];

/// Writes `/proc/sys/KEY` in the calling thread's network namespace (the
/// `net/` part of `/proc/sys` follows the thread, not the mount).
fn sysctl(key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/{key}");
    std::fs::write(&path, value).with_context(|| format!("writing {value} to {path}"))
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut digits = Vec::new();
    loop {
        digits.push(char::from(DIGITS[(n % 36) as usize]));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    digits.iter().rev().collect()
}

/// A third octet for `10.213.X.0/24` (and `fd00:213:X::/64`) that no
/// interface of the root namespace uses yet. The search starts at a value
/// derived from the process and the counter, so concurrent runs and the
/// leftovers of a crashed one are skipped instead of sharing a subnet (the
/// root namespace would then route to the gateway's hosts ambiguously).
fn free_subnet(pid: u32, n: u32) -> anyhow::Result<u8> {
    let out = ip(&["-o", "-4", "addr", "show"])?;
    let in_use = String::from_utf8_lossy(&out.stdout);
    let start = pid.wrapping_add(n.wrapping_mul(7)) % 200;
    (0..200)
        .map(|step| ((start + step) % 200 + 20) as u8)
        .find(|subnet| !in_use.contains(&format!(" 10.213.{subnet}.")))
        .context("all test subnets 10.213.20-219.0/24 are in use: remove leftover `xm*` bridges")
}

impl TestNet {
    /// A bridge with `hosts` hosts (at most 200): up, every neighbour
    /// pinned, and silent (nothing crossed it for [`QUIET`]).
    pub fn new(hosts: usize) -> anyhow::Result<TestNet> {
        Self::with_veth_ifindexes(&vec![None; hosts])
    }

    /// [`TestNet::new`] with one host per entry, its host-side veth
    /// created with that ifindex (it must be free), or the kernel's
    /// choice for `None`.
    pub fn with_veth_ifindexes(veth_ifindexes: &[Option<u32>]) -> anyhow::Result<TestNet> {
        let hosts = veth_ifindexes.len();
        ensure!(hosts <= 200, "a /24 test subnet holds at most 200 hosts");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // The process id in base 36 always takes 5 characters (pid_max is
        // at most 2^22), and the counter in decimal ends before the suffix
        // letter: two (process, counter) pairs never give the same prefix.
        let prefix = format!("xm{:0>5}{n}", base36(pid));
        let mut net = TestNet {
            bridge: format!("{prefix}br"),
            bridge_ifindex: 0,
            subnet: free_subnet(pid, n)?,
            hosts: Vec::new(),
            firewall_rules: Vec::new(),
        };
        // A fixed, locally administered address: without one a Linux bridge
        // takes the smallest of its ports' addresses and changes it as ports
        // come and go, which would stale the pinned neighbour entries.
        let [_, a, b, c] = pid.to_be_bytes();
        let bridge_mac = [0x02, 0x78, a, b, c, n as u8];
        // On error `net` is dropped here, which removes what was created.
        net.build(&prefix, veth_ifindexes, bridge_mac)?;
        Ok(net)
    }

    fn build(
        &mut self,
        prefix: &str,
        veth_ifindexes: &[Option<u32>],
        bridge_mac: [u8; 6],
    ) -> anyhow::Result<()> {
        let hosts = veth_ifindexes.len();
        let br = self.bridge.clone();
        ensure!(
            format!("{prefix}h{hosts}").len() <= MAX_IFNAME,
            "interface names from {prefix} exceed {MAX_IFNAME} bytes"
        );
        ip(&[
            "link",
            "add",
            &br,
            "address",
            &mac_text(bridge_mac),
            "type",
            "bridge",
        ])?;
        for (key, value) in BRIDGE_SYSCTLS {
            sysctl(&key.replace("{}", &br), value)?;
        }
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

        for (i, chosen) in veth_ifindexes.iter().enumerate() {
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
            let index = chosen.map(|index| index.to_string());
            let index: &[&str] = match &index {
                Some(index) => &["index", index],
                None => &[],
            };
            ip(&[
                &["link", "add", &veth][..],
                index,
                &["type", "veth", "peer", "name", "eth0", "netns", &netns],
            ]
            .concat())?;
            // A bridge port needs no IPv6 of its own; with it, the port sends
            // DAD, MLD and router solicitations into the host's namespace.
            sysctl(&format!("net/ipv6/conf/{veth}/disable_ipv6"), "1")?;
            ip(&["link", "set", &veth, "master", &br, "up"])?;
            let host = &self.hosts[i];
            host.run(|| {
                for (key, value) in HOST_SYSCTLS {
                    sysctl(key, value)?;
                }
                Ok(())
            })?;
            let (ip4, ip6) = (format!("{}/24", host.ip4), format!("{}/64", host.ip6));
            ip(&["-n", &netns, "addr", "add", &ip4, "dev", "eth0"])?;
            ip(&["-n", &netns, "addr", "add", &ip6, "dev", "eth0", "nodad"])?;
            ip(&["-n", &netns, "link", "set", "lo", "up"])?;
            ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
            let mac = mac_of(Some(&netns), "eth0")?;
            let veth_ifindex = ifindex(None, &veth)?;
            ensure!(
                chosen.is_none_or(|chosen| chosen == veth_ifindex),
                "{veth} has ifindex {veth_ifindex}, not {chosen:?}"
            );
            let host = &mut self.hosts[i];
            host.mac = mac;
            host.veth_ifindex = veth_ifindex;
        }
        self.wait_until_up()?;
        self.pin_neighbours()?;
        self.wait_until_quiet()
    }

    /// Links come up asynchronously (carrier once both veth ends are up,
    /// then the bridge port's state): waits until all are operational.
    fn wait_until_up(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pending = self.links_not_up()?;
            if pending.is_empty() {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "links not operational after 5 s: {}",
                pending.join(", ")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn links_not_up(&self) -> anyhow::Result<Vec<String>> {
        let sys = |path: String| -> anyhow::Result<String> {
            Ok(std::fs::read_to_string(&path)
                .with_context(|| format!("reading {path}"))?
                .trim()
                .to_owned())
        };
        let mut pending = Vec::new();
        // A bridge without ports has no carrier, and stays down.
        if !self.hosts.is_empty()
            && sys(format!("/sys/class/net/{}/operstate", self.bridge))? != "up"
        {
            pending.push(self.bridge.clone());
        }
        for host in &self.hosts {
            // 3 is BR_STATE_FORWARDING; without STP a port forwards as soon
            // as it has carrier.
            if sys(format!("/sys/class/net/{}/operstate", host.veth))? != "up"
                || sys(format!("/sys/class/net/{}/brport/state", host.veth))? != "3"
            {
                pending.push(host.veth.clone());
            }
            let inside = ip(&["-n", &host.netns, "-o", "link", "show", "dev", "eth0"])?;
            if !String::from_utf8_lossy(&inside.stdout).contains(" state UP ") {
                pending.push(format!("eth0 in {}", host.netns));
            }
        }
        Ok(pending)
    }

    /// Waits until neither the bridge nor any of its ports carried a frame
    /// for [`QUIET`], so the reports sent while interfaces came up are not
    /// counted by a test. Fails when they keep coming (a kernel sending
    /// something the sysctls above do not silence).
    fn wait_until_quiet(&self) -> anyhow::Result<()> {
        let ours: Vec<i32> = std::iter::once(self.bridge_ifindex)
            .chain(self.hosts.iter().map(|host| host.veth_ifindex))
            .map(|ifindex| ifindex as i32)
            .collect();
        let sniffer = RootSniffer::open()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = Instant::now();
        let mut seen = 0u32;
        loop {
            let left = QUIET.saturating_sub(last.elapsed());
            if left.is_zero() {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{} still carries frames after 5 s ({seen} seen)",
                self.bridge
            );
            if sniffer
                .next_ifindex(left)?
                .is_some_and(|i| ours.contains(&i))
            {
                last = Instant::now();
                seen += 1;
            }
        }
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
    /// Removes everything `new` created. Also runs while a test panics, so
    /// failures are reported, never raised.
    fn drop(&mut self) {
        for host in &self.hosts {
            // Deleting one veth end deletes both. Done explicitly: `netns del`
            // only drops the name, and a socket still open in the namespace
            // (a leaked thread's, say) would keep it, and its veth, alive.
            let _ = ip(&["link", "del", &host.veth]);
            if let Err(error) = ip(&["netns", "del", &host.netns]) {
                eprintln!("test net cleanup: {error:#}");
            }
        }
        if let Err(error) = ip(&["link", "del", &self.bridge]) {
            eprintln!("test net cleanup: {error:#}");
        }
        for (tool, bridge) in &self.firewall_rules {
            let rule = ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"];
            if let Err(error) = run(Command::new(tool).arg("-D").args(rule)) {
                eprintln!("test net cleanup: {error:#}");
            }
        }
    }
}

/// An `AF_PACKET` socket on every interface of the calling thread's network
/// namespace that tells only which interface each frame crossed, in either
/// direction.
struct RootSniffer {
    fd: OwnedFd,
}

impl RootSniffer {
    fn open() -> anyhow::Result<RootSniffer> {
        let protocol = i32::from((libc::ETH_P_ALL as u16).to_be());
        // SAFETY: plain socket creation.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("opening an AF_PACKET socket");
        }
        // SAFETY: `fd` was just created and is owned here only.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(RootSniffer { fd })
    }

    /// The interface index of the next frame within `timeout`, if any.
    fn next_ifindex(&self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let mut poll = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = timeout.as_millis().clamp(1, 60_000) as i32;
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut poll, 1, millis) } <= 0 {
            // Timeout, or a signal: the caller's loop looks at the time.
            return Ok(None);
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // Only the address matters: a one-byte buffer truncates the frame.
        let mut byte = 0u8;
        // SAFETY: buffers valid for their lengths.
        let received = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                std::ptr::from_mut(&mut byte).cast(),
                1,
                libc::MSG_DONTWAIT,
                std::ptr::from_mut(&mut from).cast(),
                &mut from_len,
            )
        };
        if received < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(error).context("reading from an AF_PACKET socket");
        }
        Ok(Some(from.sll_ifindex))
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

/// IPv4 routing between two test nets through the root namespace: each
/// host routes the other net's /24 via its gateway. Forwarding and any
/// firewall rules added are undone on drop.
pub struct Routed {
    forwarding_before: String,
    rules: Vec<(&'static str, [String; 2])>,
}

impl Routed {
    pub fn between(one: &TestNet, two: &TestNet) -> anyhow::Result<Routed> {
        let forwarding_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .context("reading ip_forward")?
            .trim()
            .to_owned();
        let mut routed = Routed {
            forwarding_before,
            rules: Vec::new(),
        };
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling forwarding")?;
        for (from, to) in [(one, two), (two, one)] {
            let (a, b) = (from.bridge_name().to_owned(), to.bridge_name().to_owned());
            let rule = ["FORWARD", "-i", &a, "-o", &b, "-j", "ACCEPT"];
            if run(Command::new("iptables").arg("-I").args(rule)).is_ok() {
                routed.rules.push(("iptables", [a, b]));
            }
            let [x, y, z, _] = to.gateway_v4().octets();
            let subnet = format!("{x}.{y}.{z}.0/24");
            for host in from.hosts() {
                ip(&[
                    "-n",
                    host.netns_name(),
                    "route",
                    "add",
                    &subnet,
                    "via",
                    &from.gateway_v4().to_string(),
                ])?;
            }
        }
        Ok(routed)
    }
}

impl Drop for Routed {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", &self.forwarding_before);
        for (tool, [a, b]) in &self.rules {
            let rule = ["FORWARD", "-i", a, "-o", b, "-j", "ACCEPT"];
            let _ = run(Command::new(tool).arg("-D").args(rule));
        }
    }
}

/// `count` datagrams sent from the namespace at path `from` to `target`;
/// how many a socket bound in namespace `to` received.
pub fn datagrams_delivered(from: &str, to: &str, target: &str, count: usize) -> usize {
    let target: SocketAddr = target.parse().expect("an address");
    let receiver = in_netns(to, || {
        let socket = UdpSocket::bind(("0.0.0.0", target.port()))?;
        socket.set_read_timeout(Some(Duration::from_millis(500)))?;
        Ok(socket)
    })
    .expect("receiver");
    in_netns(from, || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        for _ in 0..count {
            socket.send_to(b"policy", target)?;
        }
        Ok(())
    })
    .expect("send");
    let mut buffer = [0u8; 64];
    std::iter::from_fn(|| receiver.recv(&mut buffer).ok()).count()
}
