//! A real Docker engine for the tests: started when none answers, with a
//! busybox image built from Debian's busybox-static (no registry needed),
//! and networks and containers that remove themselves on drop.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{net::in_netns, scratch::Scratch};

pub const IMAGE: &str = "crossmon-test/busybox:1";
const APPLETS: &[&str] = &[
    "sh", "sleep", "ping", "nc", "cat", "echo", "ip", "wget", "httpd",
];

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Makes sure the Docker tests can run: as root, with an engine and the
/// test image (started and built when missing); fails the test with one
/// line saying why otherwise.
pub fn docker_ready() {
    crate::require_root();
    if let Err(err) = engine() {
        panic!("needs a Docker engine and the test image: {err:#}");
    }
}

/// `docker ARGS`, failing with stderr.
pub fn docker(args: &[&str]) -> anyhow::Result<Output> {
    let output = Command::new("docker")
        .args(args)
        .output()
        .context("running docker (package docker.io)")?;
    if !output.status.success() {
        bail!(
            "docker {args:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

fn text(output: Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Makes sure an engine answers (starting `dockerd` if none does) and the
/// test image exists.
pub fn engine() -> anyhow::Result<()> {
    if docker(&["info"]).is_err() {
        start_dockerd()?;
    }
    if docker(&["image", "inspect", IMAGE]).is_err() {
        build_image()?;
    }
    Ok(())
}

/// Starts `dockerd --live-restore` (containers outlive a daemon restart)
/// and waits until it answers. It runs on after the tests; no test stops
/// it (the restart test has an engine of its own).
fn start_dockerd() -> anyhow::Result<()> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open("/tmp/crossmon-test-dockerd.log")?;
    Command::new("dockerd")
        .arg("--live-restore")
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .context("starting dockerd")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while docker(&["info"]).is_err() {
        if Instant::now() > deadline {
            bail!("dockerd did not answer within 60 s; see /tmp/crossmon-test-dockerd.log");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

fn build_image() -> anyhow::Result<()> {
    let scratch = Scratch::new("busybox");
    let root = scratch.dir().display().to_string();
    let bin = format!("{root}/bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy("/bin/busybox", format!("{bin}/busybox"))
        .context("copying /bin/busybox (package busybox-static)")?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", format!("{bin}/{applet}"))?;
    }
    let status = Command::new("sh")
        .args([
            "-c",
            &format!("tar -C {root} -c . | docker import - {IMAGE} >/dev/null"),
        ])
        .status()?;
    if !status.success() {
        bail!("docker import of the busybox image failed");
    }
    Ok(())
}

/// A unique name for this process: `xm<pid>-<n>-<what>`.
pub fn unique(what: &str) -> String {
    format!(
        "xm{}-{}-{what}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A user-defined bridge network, removed on drop.
pub struct DockerNetwork {
    pub name: String,
}

impl DockerNetwork {
    pub fn create(what: &str, options: &[&str]) -> anyhow::Result<Self> {
        let name = unique(what);
        let mut args = vec!["network", "create"];
        args.extend(options);
        args.push(&name);
        docker(&args)?;
        Ok(Self { name })
    }
}

impl DockerNetwork {
    /// A container on this network only.
    pub fn run(&self, what: &str) -> Container {
        Container::run(what, &["--network", &self.name])
            .unwrap_or_else(|err| panic!("running {what} on {}: {err:#}", self.name))
    }
}

impl Drop for DockerNetwork {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.name]);
    }
}

/// A macvlan network whose parent is one end of a veth pair of its own
/// (never a real NIC; these kernels have no dummy interfaces); the other
/// end is its "wire". Removed on drop, the network before the pair.
pub struct MacvlanNetwork {
    pub network: DockerNetwork,
    parent: String,
}

impl MacvlanNetwork {
    pub fn create(what: &str, subnet: &str) -> anyhow::Result<Self> {
        let parent = format!(
            "xm{}v{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let wire = format!("{parent}x");
        crate::net::ip(&[
            "link", "add", &parent, "type", "veth", "peer", "name", &wire,
        ])?;
        let made = (|| {
            crate::net::ip(&["link", "set", &parent, "up"])?;
            crate::net::ip(&["link", "set", &wire, "up"])?;
            let option = format!("parent={parent}");
            DockerNetwork::create(what, &["-d", "macvlan", "--subnet", subnet, "-o", &option])
        })();
        match made {
            Ok(network) => Ok(Self { network, parent }),
            Err(err) => {
                let _ = crate::net::ip(&["link", "del", &parent]);
                Err(err)
            }
        }
    }

    /// The parent's peer, in the root namespace.
    pub fn wire(&self) -> String {
        format!("{}x", self.parent)
    }
}

impl Drop for MacvlanNetwork {
    fn drop(&mut self) {
        // Docker refuses to delete a network whose parent is gone first.
        let _ = docker(&["network", "rm", &self.network.name]);
        let _ = crate::net::ip(&["link", "del", &self.parent]);
    }
}

/// A running container (`sleep` forever unless told otherwise), removed on
/// drop.
pub struct Container {
    pub name: String,
}

impl Container {
    /// `docker run -d --name <unique> OPTIONS IMAGE sleep 3600`.
    pub fn run(what: &str, options: &[&str]) -> anyhow::Result<Self> {
        Self::run_command(what, options, &["sleep", "3600"])
    }

    /// `docker run -d --name <unique> OPTIONS IMAGE COMMAND`.
    pub fn run_command(what: &str, options: &[&str], command: &[&str]) -> anyhow::Result<Self> {
        let name = unique(what);
        let mut args = vec!["run", "-d", "--name", &name];
        args.extend(options);
        args.push(IMAGE);
        args.extend(command);
        docker(&args)?;
        Ok(Self { name })
    }

    /// `ping -c COUNT TO` inside the container; every reply required.
    pub fn ping(&self, to: &str, count: u32) {
        self.exec(&["ping", "-q", "-c", &count.to_string(), to])
            .unwrap_or_else(|err| panic!("ping {to} from {}: {err:#}", self.name));
    }

    /// SYNs from this container to each of `ports` on `ip`, none
    /// listening: each must be refused with a RST.
    pub fn connect_refused(&self, ip: &str, ports: std::ops::Range<u16>) {
        in_netns(&self.netns().expect("netns"), || {
            for port in ports {
                let target: SocketAddr = format!("{ip}:{port}").parse()?;
                let err = TcpStream::connect_timeout(&target, Duration::from_secs(2))
                    .expect_err("nothing listens");
                anyhow::ensure!(
                    err.kind() == std::io::ErrorKind::ConnectionRefused,
                    "port {port}: {err}"
                );
            }
            Ok(())
        })
        .expect("refused connections");
    }

    /// `count` TCP connections from this container to `server`'s `ip:port`,
    /// accepted by a listener in the server's namespace; each sends
    /// `request` (possibly nothing), which the server reads whole, then both
    /// close.
    pub fn tcp_sessions(
        &self,
        server: &Container,
        ip: &str,
        port: u16,
        count: usize,
        request: &[u8],
    ) {
        tcp_sessions(
            &self.netns().expect("netns"),
            &server.netns().expect("netns"),
            ip,
            port,
            count,
            request,
        );
    }

    /// A TCP connection from this container to `server`'s `ip:port`, where
    /// a listener waits, must go unanswered: dropped on the way, neither
    /// accepted nor refused.
    pub fn tcp_blocked(&self, server: &Container, ip: &str, port: u16) {
        let _listener = in_netns(&server.netns().expect("netns"), || {
            Ok(TcpListener::bind(("0.0.0.0", port))?)
        })
        .expect("listener in the server");
        let target: SocketAddr = format!("{ip}:{port}").parse().expect("address");
        let outcome = in_netns(&self.netns().expect("netns"), || {
            Ok(TcpStream::connect_timeout(&target, Duration::from_secs(2)))
        })
        .expect("connecting");
        match outcome {
            Err(err) if err.kind() == std::io::ErrorKind::TimedOut => {}
            other => panic!(
                "{} -> {target}: expected no answer, got {other:?}",
                self.name
            ),
        }
    }

    /// The name of this container's host-side veth (of its `eth0`).
    pub fn host_veth(&self) -> anyhow::Result<String> {
        let iflink = text(docker(&[
            "exec",
            &self.name,
            "cat",
            "/sys/class/net/eth0/iflink",
        ])?);
        for entry in std::fs::read_dir("/sys/class/net")?.flatten() {
            let index = std::fs::read_to_string(entry.path().join("ifindex")).unwrap_or_default();
            if index.trim() == iflink {
                return Ok(entry.file_name().to_string_lossy().into_owned());
            }
        }
        bail!("no host interface has ifindex {iflink}")
    }

    pub fn exec(&self, command: &[&str]) -> anyhow::Result<Output> {
        let mut args = vec!["exec", self.name.as_str()];
        args.extend(command);
        docker(&args)
    }

    /// The container's IPv4 address on `network`.
    pub fn ip(&self, network: &str) -> anyhow::Result<String> {
        let format = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
        Ok(text(docker(&["inspect", "-f", &format, &self.name])?))
    }

    /// The container's MAC address on `network`.
    pub fn mac(&self, network: &str) -> anyhow::Result<[u8; 6]> {
        let format = format!("{{{{(index .NetworkSettings.Networks \"{network}\").MacAddress}}}}");
        let text = text(docker(&["inspect", "-f", &format, &self.name])?);
        let mut mac = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut mac {
            *byte = u8::from_str_radix(parts.next().context("short MAC")?, 16)?;
        }
        Ok(mac)
    }

    pub fn id(&self) -> anyhow::Result<String> {
        Ok(text(docker(&["inspect", "-f", "{{.Id}}", &self.name])?))
    }

    /// `/proc/PID/ns/net` of the container's process.
    pub fn netns(&self) -> anyhow::Result<String> {
        let pid = text(docker(&["inspect", "-f", "{{.State.Pid}}", &self.name])?);
        Ok(format!("/proc/{pid}/ns/net"))
    }

    pub fn rename(&mut self, what: &str) -> anyhow::Result<()> {
        let name = unique(what);
        docker(&["rename", &self.name, &name])?;
        self.name = name;
        Ok(())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.name]);
    }
}

/// ACCEPT rules in DOCKER-USER between two addresses, removed on drop.
pub struct Bypass(Vec<Vec<String>>);

impl Bypass {
    pub fn between(a: &str, b: &str) -> Bypass {
        let rules: Vec<Vec<String>> = [(a, b), (b, a)]
            .iter()
            .map(|(from, to)| {
                ["DOCKER-USER", "-s", from, "-d", to, "-j", "ACCEPT"]
                    .map(str::to_owned)
                    .to_vec()
            })
            .collect();
        for rule in &rules {
            let status = std::process::Command::new("iptables")
                .arg("-I")
                .args(rule)
                .status()
                .expect("iptables");
            assert!(status.success(), "iptables -I {rule:?}");
        }
        Bypass(rules)
    }
}

impl Drop for Bypass {
    fn drop(&mut self) {
        for rule in &self.0 {
            let _ = std::process::Command::new("iptables")
                .arg("-D")
                .args(rule)
                .status();
        }
    }
}

/// `count` TCP connections from the network namespace `client` to
/// `ip:port`, accepted by a listener in the namespace `server`; each sends
/// `request` (possibly nothing), which the server reads whole, then both
/// close.
pub fn tcp_sessions(client: &str, server: &str, ip: &str, port: u16, count: usize, request: &[u8]) {
    let listener = in_netns(server, || Ok(TcpListener::bind(("0.0.0.0", port))?))
        .expect("listener in the server");
    let target: SocketAddr = format!("{ip}:{port}").parse().expect("address");
    in_netns(client, || {
        for _ in 0..count {
            let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
            let (mut accepted, _) = listener.accept()?;
            stream.write_all(request)?;
            stream.shutdown(std::net::Shutdown::Write)?;
            let mut received = Vec::new();
            accepted.set_read_timeout(Some(Duration::from_secs(5)))?;
            accepted.read_to_end(&mut received)?;
            anyhow::ensure!(
                received == request,
                "the server got {} bytes",
                received.len()
            );
        }
        Ok(())
    })
    .expect("connections accepted");
}
