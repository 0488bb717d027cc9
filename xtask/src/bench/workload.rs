//! The traffic workloads. Each sends from the client namespace to the
//! server namespace across the bridge and measures what the receiving end
//! got, over a window that starts after a warm-up.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    process::{Child, Stdio},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};

use super::{
    net::{self, BenchNet},
    sleep,
};
use crate::cmd;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// TCP bulk throughput (iperf3).
    #[value(name = "bulk")]
    TcpBulk,
    /// UDP with 64-byte payloads, packets per second.
    #[value(name = "udp")]
    SmallUdp,
    /// New TCP connections per second.
    Churn,
}

const IPERF_PORT: u16 = 5201;
const UDP_PORT: u16 = 5301;
const CHURN_PORT: u16 = 5302;

/// What each window skips first: connection set-up, slow start, the
/// first socket-buffer fill.
const WARM_UP: Duration = Duration::from_millis(500);

impl Workload {
    pub const ALL: [Workload; 3] = [Self::TcpBulk, Self::SmallUdp, Self::Churn];

    pub fn title(self) -> &'static str {
        match self {
            Self::TcpBulk => "TCP bulk (iperf3)",
            Self::SmallUdp => "UDP, 64-byte payloads",
            Self::Churn => "TCP connection churn",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Self::TcpBulk => {
                "one iperf3 TCP stream, client to server; received Gbit/s (iperf3's \
                 `sum_received`), the first second omitted"
            }
            Self::SmallUdp => {
                "one thread sends 64-byte UDP payloads with `sendmmsg` (batches of 64) as fast \
                 as it can; packets per second *delivered* to the receiving socket (`recvmmsg`, \
                 8 MiB receive buffer), after a 0.5 s warm-up"
            }
            Self::Churn => {
                "4 client threads each loop connect, send 1 byte, receive 1 byte, close; 4 \
                 server threads accept, answer, wait for the client's FIN, close; completed \
                 connections per second, after a 0.5 s warm-up. One client address to one \
                 server port: a connection's ports come back within seconds, as they must for \
                 conntrack to keep up on a host with `br_netfilter` (a new four-tuple each \
                 time fills its table at this rate)"
            }
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Self::TcpBulk => "Gbit/s",
            Self::SmallUdp => "kpps",
            Self::Churn => "conn/s",
        }
    }

    /// A measured value in [`Self::unit`].
    pub fn display(self, value: f64) -> String {
        match self {
            Self::TcpBulk => format!("{:.2}", value / 1e9),
            Self::SmallUdp => format!("{:.1}", value / 1e3),
            Self::Churn => format!("{value:.0}"),
        }
    }

    /// The least fraction of the bare path's figure crossmon must keep.
    pub fn target(self) -> f64 {
        match self {
            Self::TcpBulk => 0.97,
            Self::SmallUdp => 0.95,
            Self::Churn => 0.92,
        }
    }

    /// The most ns per run `from_container` may cost on this workload
    /// (issue 18): a churned connection's packets each open or close a
    /// flow, so they get twice the steady figure.
    pub fn max_ns_from_container(self) -> f64 {
        match self {
            Self::TcpBulk | Self::SmallUdp => 150.0,
            Self::Churn => 300.0,
        }
    }

    /// Runs the workload for `seconds` (plus its warm-up).
    pub fn run(self, net: &BenchNet, seconds: u64) -> anyhow::Result<Delivered> {
        match self {
            Self::TcpBulk => tcp_bulk(net, seconds).map(Delivered::of_rate),
            Self::SmallUdp => small_udp(net, seconds).map(Delivered::of_rate),
            Self::Churn => churn(net, seconds),
        }
        .with_context(|| format!("workload {}", self.title()))
    }
}

/// What one run of a workload delivered.
pub struct Delivered {
    /// Bit/s, packets/s or connections/s over the measured window.
    pub rate: f64,
    /// Connections attempted over the whole run, its warm-up included
    /// (connection churn only).
    pub connections: Option<u64>,
}

impl Delivered {
    fn of_rate(rate: f64) -> Self {
        Delivered {
            rate,
            connections: None,
        }
    }
}

/// The iperf3 server in the server namespace, for the whole bench.
pub struct IperfServer(Child);

impl IperfServer {
    pub fn start(net: &BenchNet) -> anyhow::Result<Self> {
        let server = net.server();
        let child = cmd::command("ip")
            .args(["netns", "exec", &server.netns, "iperf3", "-s", "-B"])
            .arg(server.addr.to_string())
            .args(["-p", &IPERF_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the iperf3 server")?;
        let mut iperf = Self(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let listening = cmd::output(
                "ss",
                cmd::command("ip")
                    .args(["netns", "exec", &server.netns, "ss", "-Hltn"])
                    .arg(format!("sport = :{IPERF_PORT}")),
            )?;
            if !listening.trim().is_empty() {
                return Ok(iperf);
            }
            if let Some(status) = iperf.0.try_wait()? {
                bail!("the iperf3 server exited ({status})");
            }
            ensure!(
                Instant::now() < deadline,
                "the iperf3 server did not listen within 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tcp_bulk(net: &BenchNet, seconds: u64) -> anyhow::Result<f64> {
    let (client, server) = (net.client(), net.server());
    let report = cmd::output(
        "iperf3 client",
        cmd::command("ip")
            .args(["netns", "exec", &client.netns, "iperf3", "-J", "-c"])
            .arg(server.addr.to_string())
            .args(["-p", &IPERF_PORT.to_string()])
            .args(["-t", &seconds.to_string(), "-O", "1"]),
    )?;
    let report: serde_json::Value =
        serde_json::from_str(&report).context("parsing iperf3's JSON report")?;
    if let Some(error) = report.get("error").and_then(serde_json::Value::as_str) {
        bail!("iperf3: {error}");
    }
    report
        .pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .context("iperf3's report has no end.sum_received.bits_per_second")
}

/// Counts over one window: `counter` after [`WARM_UP`] and `seconds`
/// later, per second.
fn rate(counter: &AtomicU64, seconds: u64) -> anyhow::Result<f64> {
    sleep(WARM_UP)?;
    let (start, at) = (counter.load(Ordering::Relaxed), Instant::now());
    sleep(Duration::from_secs(seconds))?;
    let (end, elapsed) = (counter.load(Ordering::Relaxed), at.elapsed());
    Ok(end.saturating_sub(start) as f64 / elapsed.as_secs_f64())
}

const UDP_PAYLOAD: usize = 64;
const UDP_BATCH: usize = 64;

fn small_udp(net: &BenchNet, seconds: u64) -> anyhow::Result<f64> {
    let (client, server) = (net.client(), net.server());
    // A socket stays in the namespace it was created in, whichever thread
    // uses it later.
    let receiver = net::in_netns(&server.netns, || {
        let socket = UdpSocket::bind((server.addr, UDP_PORT)).context("binding the receiver")?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        // Absorbs the receiver's scheduling gaps, so what is counted is the
        // path's capacity rather than the receiver's luck.
        set_int_option(&socket, libc::SO_RCVBUFFORCE, 8 << 20)?;
        Ok(socket)
    })?;
    let sender = net::in_netns(&client.netns, || {
        let socket = UdpSocket::bind((client.addr, 0)).context("binding the sender")?;
        socket.connect((server.addr, UDP_PORT))?;
        Ok(socket)
    })?;
    let stop = AtomicBool::new(false);
    let received = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let receiving = scope.spawn(|| receive_datagrams(&receiver, &stop, &received));
        let sending = scope.spawn(|| send_datagrams(&sender, &stop));
        let measured = rate(&received, seconds);
        stop.store(true, Ordering::Relaxed);
        let sent = join(sending)?;
        join(receiving)?;
        let measured = measured?;
        ensure!(sent > 0, "no datagram could be sent");
        Ok(measured)
    })
}

fn set_int_option(
    socket: &impl std::os::fd::AsRawFd,
    option: i32,
    value: i32,
) -> anyhow::Result<()> {
    // SAFETY: a live socket and a c_int option value of the size given.
    let ret = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error()).context("setsockopt");
    }
    Ok(())
}

/// A transient send or receive error: the loop goes on.
pub fn transient(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    ) || matches!(
        err.raw_os_error(),
        // A full queue on the way, or an ICMP error from before the
        // receiver was bound.
        Some(libc::ENOBUFS | libc::ECONNREFUSED)
    )
}

fn send_datagrams(socket: &UdpSocket, stop: &AtomicBool) -> anyhow::Result<u64> {
    let payload = [0x5a_u8; UDP_PAYLOAD];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr().cast_mut().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
    let mut messages: Vec<libc::mmsghdr> = (0..UDP_BATCH)
        .map(|_| unsafe { std::mem::zeroed() })
        .collect();
    for message in &mut messages {
        message.msg_hdr.msg_iov = &mut iov;
        message.msg_hdr.msg_iovlen = 1;
    }
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: every message points at `iov`, which points at `payload`;
        // both outlive the call, and the kernel only reads them.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                messages.as_mut_ptr(),
                UDP_BATCH as libc::c_uint,
                0,
            )
        };
        match u64::try_from(n) {
            Ok(n) => sent += n,
            Err(_) => {
                let err = std::io::Error::last_os_error();
                if !transient(&err) {
                    return Err(err).context("sendmmsg");
                }
            }
        }
    }
    Ok(sent)
}

fn receive_datagrams(
    socket: &UdpSocket,
    stop: &AtomicBool,
    received: &AtomicU64,
) -> anyhow::Result<()> {
    let mut buffers = vec![[0_u8; 2 * UDP_PAYLOAD]; UDP_BATCH];
    let mut iovs: Vec<libc::iovec> = buffers
        .iter_mut()
        .map(|buffer| libc::iovec {
            iov_base: buffer.as_mut_ptr().cast(),
            iov_len: buffer.len(),
        })
        .collect();
    // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
    let mut messages: Vec<libc::mmsghdr> = (0..UDP_BATCH)
        .map(|_| unsafe { std::mem::zeroed() })
        .collect();
    for (message, iov) in messages.iter_mut().zip(&mut iovs) {
        message.msg_hdr.msg_iov = iov;
        message.msg_hdr.msg_iovlen = 1;
    }
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: each message points at its own iovec and buffer, all alive
        // and unaliased during the call. MSG_WAITFORONE: return once one has
        // come; the socket's 100 ms timeout bounds the wait for the first.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                messages.as_mut_ptr(),
                UDP_BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        match u64::try_from(n) {
            Ok(n) => {
                received.fetch_add(n, Ordering::Relaxed);
            }
            Err(_) => {
                let err = std::io::Error::last_os_error();
                if !transient(&err) {
                    return Err(err).context("recvmmsg");
                }
            }
        }
    }
    Ok(())
}

const CHURN_CLIENTS: usize = 4;
const CHURN_SERVERS: usize = 4;

fn churn(net: &BenchNet, seconds: u64) -> anyhow::Result<Delivered> {
    let (client, server) = (net.client(), net.server());
    let listener = net::in_netns(&server.netns, || {
        let listener =
            TcpListener::bind((server.addr, CHURN_PORT)).context("binding the churn server")?;
        // Server threads poll with a timeout, so they notice the end.
        listener.set_nonblocking(true)?;
        Ok(listener)
    })?;
    let target = SocketAddr::from((server.addr, CHURN_PORT));
    let stop = AtomicBool::new(false);
    let completed = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let servers: Vec<_> = (0..CHURN_SERVERS)
            .map(|_| scope.spawn(|| serve_connections(&listener, &stop)))
            .collect();
        let (stop, completed, failed) = (&stop, &completed, &failed);
        let clients: Vec<_> = (0..CHURN_CLIENTS)
            .map(|_| {
                scope.spawn(move || {
                    net::enter(&client.netns)?;
                    while !stop.load(Ordering::Relaxed) {
                        match one_connection(target) {
                            Ok(()) => completed.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                    Ok(())
                })
            })
            .collect();
        let measured = rate(completed, seconds);
        stop.store(true, Ordering::Relaxed);
        for thread in clients.into_iter().chain(servers) {
            join(thread)?;
        }
        let measured = measured?;
        let (completed, failed) = (
            completed.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
        );
        // A few failures (a port still in TIME_WAIT) cost little; many
        // would mean the figure measures something else.
        ensure!(
            failed * 100 <= completed,
            "{failed} of {} connections failed{}",
            completed + failed,
            conntrack_full().unwrap_or_default()
        );
        Ok(Delivered {
            rate: measured,
            connections: Some(completed + failed),
        })
    })
}

/// Why connections may have failed, when conntrack's table is (nearly)
/// full: with `br_netfilter` loaded each bridged connection takes an
/// entry, kept 120 s after it closes, and a full table drops new
/// connections' SYNs.
fn conntrack_full() -> Option<String> {
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let (count, max) = (read("nf_conntrack_count")?, read("nf_conntrack_max")?);
    (count * 10 >= max * 9).then(|| {
        format!(
            ": conntrack's table is nearly full ({count} of {max} entries), and a full one \
             drops new connections; its entries of closed connections expire within 2 minutes"
        )
    })
}

fn one_connection(target: SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(1))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"?")?;
    let mut answer = [0_u8; 1];
    stream.read_exact(&mut answer)
    // Dropped: the client closes first, as an HTTP/1.0 client would.
}

fn serve_connections(listener: &TcpListener, stop: &AtomicBool) -> anyhow::Result<()> {
    let mut poll = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: one valid pollfd, for the duration of the call.
        if unsafe { libc::poll(&mut poll, 1, 100) } <= 0 {
            continue;
        }
        let mut stream = match listener.accept() {
            Ok((stream, _)) => stream,
            // Another server thread took it.
            Err(err) if err.kind() == ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err).context("accept"),
        };
        // A client that went away costs a failure on its side, not ours.
        let _ = answer(&mut stream);
    }
    Ok(())
}

fn answer(stream: &mut TcpStream) -> std::io::Result<()> {
    // Accepted sockets do not inherit the listener's O_NONBLOCK on Linux.
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut request = [0_u8; 1];
    stream.read_exact(&mut request)?;
    stream.write_all(b"!")?;
    // Wait for the client's FIN, so the client ends in TIME_WAIT.
    let _ = stream.read(&mut request)?;
    Ok(())
}

fn join<T>(thread: std::thread::ScopedJoinHandle<'_, anyhow::Result<T>>) -> anyhow::Result<T> {
    thread
        .join()
        .unwrap_or_else(|_| bail!("a workload thread panicked"))
}
