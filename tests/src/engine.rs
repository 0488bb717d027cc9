//! A Docker engine of the tests' own, in a network namespace of a
//! [`TestNet`] host: its own data root, exec root, socket, containerd
//! namespace, bridge subnet and host name. Several run side by side with
//! the machine's engine, which they never touch: the hosts of a swarm, or
//! an engine a test may stop and restart at will.
//!
//! `nsenter --net`, not `ip netns exec`: the latter remounts /sys, hides the
//! cgroup v1 mounts, and dockerd stops with "Devices cgroup isn't mounted".
//!
//! [`TestNet`]: crate::TestNet

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{docker::IMAGE, Host};

pub struct NamespacedEngine {
    /// Also the engine's host name, hence its swarm node name.
    pub name: String,
    socket: PathBuf,
    exec_root: PathBuf,
    data_root: PathBuf,
    log: PathBuf,
    netns_path: String,
    bridge_subnet: u8,
    /// `--live-restore`: containers outlive a stop and a restart.
    live_restore: bool,
    child: Option<Child>,
}

impl NamespacedEngine {
    /// Starts an engine in `host`'s namespace, its default bridge on
    /// `172.31.<bridge_subnet>.0/24`, and loads the test image into it.
    pub fn start(name: &str, host: &Host, bridge_subnet: u8) -> anyhow::Result<Self> {
        Self::start_with(name, host, bridge_subnet, false)
    }

    /// As [`NamespacedEngine::start`], with `--live-restore`: its
    /// containers keep running while it is stopped or restarts.
    pub fn start_live_restore(name: &str, host: &Host, bridge_subnet: u8) -> anyhow::Result<Self> {
        Self::start_with(name, host, bridge_subnet, true)
    }

    fn start_with(
        name: &str,
        host: &Host,
        bridge_subnet: u8,
        live_restore: bool,
    ) -> anyhow::Result<Self> {
        let mut engine = Self {
            name: name.to_owned(),
            socket: PathBuf::from(format!("/run/{name}.sock")),
            exec_root: PathBuf::from(format!("/run/{name}")),
            data_root: PathBuf::from(format!("/var/lib/{name}")),
            log: std::env::temp_dir().join(format!("{name}-dockerd.log")),
            netns_path: format!("/var/run/netns/{}", host.netns_name()),
            bridge_subnet,
            live_restore,
            child: None,
        };
        engine.spawn()?;
        crate::docker::engine()?;
        engine.load(IMAGE)?;
        Ok(engine)
    }

    /// `unix:///run/<name>.sock`, for `DOCKER_HOST` or `--docker-host`.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The network namespace the engine runs in (its host's).
    pub fn netns_path(&self) -> &str {
        &self.netns_path
    }

    /// Where the engine keeps its sandboxes' namespaces (`netns/`).
    pub fn exec_root(&self) -> &Path {
        &self.exec_root
    }

    /// `docker ARGS` against this engine, failing with stderr.
    pub fn docker(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.docker_with_env(&[], args)
    }

    /// `docker ARGS` against this engine with `env` set too (what a stack
    /// file's variables take), failing with stderr.
    pub fn docker_with_env(&self, env: &[(&str, &str)], args: &[&str]) -> anyhow::Result<Output> {
        let output = Command::new("docker")
            .env("DOCKER_HOST", self.docker_host())
            .envs(env.iter().copied())
            .args(args)
            .output()
            .context("running docker")?;
        if !output.status.success() {
            bail!(
                "docker {args:?} on {}: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(output)
    }

    /// `docker ARGS`' standard output, trimmed.
    pub fn text(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.docker(args)?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.exec_root)?;
        std::fs::create_dir_all(&self.data_root)?;
        self.share_namespaces()?;
        let log = std::fs::File::create(&self.log)?;
        // A UTS namespace of its own for the host name: swarm names nodes
        // after it, and three nodes called like this machine would be one.
        let dockerd = format!(
            "hostname {name} && exec dockerd --data-root {data} --exec-root {exec} \
             --pidfile {exec}.pid -H unix://{socket} --containerd-namespace {name} \
             --containerd-plugins-namespace {name}-plugins --bip 172.31.{subnet}.1/24{live}",
            name = self.name,
            data = self.data_root.display(),
            exec = self.exec_root.display(),
            socket = self.socket.display(),
            subnet = self.bridge_subnet,
            live = if self.live_restore {
                " --live-restore"
            } else {
                ""
            },
        );
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns_path))
            .args(["unshare", "--uts", "sh", "-c", &dockerd])
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("starting dockerd under nsenter")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.docker(&["info"]).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "dockerd {} did not answer within 60 s; see {}",
                    self.name,
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(())
    }

    /// Copies `image` from the machine's engine into this one (`docker
    /// save | docker load`: no registry).
    pub fn load(&self, image: &str) -> anyhow::Result<()> {
        let status = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "docker save {image} | DOCKER_HOST={} docker load -q >/dev/null",
                    self.docker_host()
                ),
            ])
            .status()
            .context("docker save | docker load")?;
        if !status.success() {
            bail!("loading {image} into {} failed", self.name);
        }
        Ok(())
    }

    /// Makes `<exec-root>/netns` a shared mount, as it is on a systemd
    /// host (where `/` is shared): a container given it with `rslave`
    /// propagation (deploy/swarm/stack.yml's agent) sees the namespaces
    /// the engine binds there after it started. This machine's `/` is
    /// private.
    fn share_namespaces(&self) -> anyhow::Result<()> {
        let netns = self.exec_root.join("netns");
        std::fs::create_dir_all(&netns)?;
        let path = netns.display().to_string();
        // Shared already (a live-restore engine's restart): binding again
        // would hide the namespaces bound under the first.
        let mounts = std::fs::read_to_string("/proc/self/mounts").context("mounts")?;
        if mounts
            .lines()
            .any(|line| line.split_whitespace().nth(1) == Some(path.as_str()))
        {
            return Ok(());
        }
        for args in [
            ["--bind", path.as_str(), path.as_str()],
            ["--make-shared", path.as_str(), ""],
        ] {
            let status = Command::new("mount")
                .args(args.iter().filter(|a| !a.is_empty()))
                .status()
                .context("mount")?;
            if !status.success() {
                bail!("mount {args:?} failed");
            }
        }
        Ok(())
    }

    /// Stops the engine (SIGTERM, then SIGKILL after 30 s) and, unless its
    /// containers live on (`--live-restore`), what it left mounted; its
    /// data stays for [`NamespacedEngine::restart`].
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // `sh` exec'd dockerd: the child's pid is dockerd's.
        let pid = i32::try_from(child.id()).context("pid")?;
        // SAFETY: signalling a process this harness started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !self.live_restore {
            self.unmount_leftovers();
        }
        Ok(())
    }

    /// Stops the engine and starts it again on the same data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// Sandboxes' namespaces and overlay mounts outlive dockerd under its
    /// roots; deepest first.
    fn unmount_leftovers(&self) {
        let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
            return;
        };
        let roots = [&self.exec_root, &self.data_root];
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|line| line.split_whitespace().nth(1))
            .filter(|point| roots.iter().any(|root| Path::new(point).starts_with(root)))
            .collect();
        ours.sort_by_key(|point| std::cmp::Reverse(point.len()));
        for point in ours {
            let Ok(path) = std::ffi::CString::new(point) else {
                continue;
            };
            // SAFETY: a NUL-terminated path; a lazy unmount of the harness's own mount.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

impl Drop for NamespacedEngine {
    fn drop(&mut self) {
        // Containers that would outlive the engine go first.
        if self.live_restore && self.child.is_some() {
            if let Ok(ids) = self.text(&["ps", "-aq"]) {
                for id in ids.lines() {
                    let _ = self.docker(&["rm", "-f", id]);
                }
            }
        }
        if let Err(err) = self.stop() {
            eprintln!("stopping dockerd {}: {err:#}", self.name);
        }
        self.unmount_leftovers();
        for dir in [&self.exec_root, &self.data_root] {
            let _ = std::fs::remove_dir_all(dir);
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}
