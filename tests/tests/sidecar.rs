//! The sidecar: the image `cargo xtask image` builds, started as
//! docker-compose.yml's own `crossmon` service (host network and PID
//! namespace, every capability dropped but the documented ones, not
//! privileged), watching the other containers of the real engine.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use std::{
    net::SocketAddr,
    process::{Command, Output},
};

use integration_tests::{
    agent::{free_port, get, get_json, wait_until},
    caps,
    docker::{docker, docker_ready, unique, DockerNetwork},
    exposition::{samples_when, Sample},
    sidecar_image::SidecarImage,
};
use monitor::datapath::preflight::{CAPABILITIES, CAP_SYS_ADMIN};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// `docker-compose -p NAME -f docker-compose.yml` with the given
/// variables; `down -v` on drop removes its containers and volumes.
struct Compose {
    project: String,
    env: Vec<(&'static str, String)>,
}

impl Compose {
    /// `docker-compose` on the shipped file, as this test's project.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("docker-compose");
        command
            .current_dir(ROOT)
            .args([
                "--project-name",
                &self.project,
                "--file",
                "docker-compose.yml",
            ])
            .args(args)
            .envs(self.env.iter().map(|(key, value)| (key, value)));
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        let output = self
            .command(args)
            .output()
            .expect("running docker-compose (package docker-compose)");
        assert!(
            output.status.success(),
            "docker-compose {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = self
            .command(&["down", "--volumes", "--timeout", "5"])
            .output();
    }
}

fn text(output: Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The capabilities the compose file's `crossmon` service gets on this
/// engine: the documented set from Docker 23.0, else CAP_SYS_ADMIN in place
/// of CAP_BPF and CAP_PERFMON (the file's comment says how), as variables
/// for compose and the mask the agent must hold.
fn engine_capabilities() -> (Vec<(&'static str, String)>, u64) {
    let version = text(docker(&["version", "--format", "{{.Server.Version}}"]).expect("version"));
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|major| major.parse().ok())
        .unwrap_or_else(|| panic!("engine version {version}"));
    let documented = caps::mask(CAPABILITIES.iter().map(|cap| cap.bit));
    if major >= 23 {
        return (Vec::new(), documented);
    }
    let granted_by_sys_admin = caps::mask(
        CAPABILITIES
            .iter()
            .filter(|cap| cap.sys_admin_grants)
            .map(|cap| cap.bit),
    );
    (
        vec![
            ("CROSSMON_CAP_BPF", "SYS_ADMIN".to_owned()),
            ("CROSSMON_CAP_PERFMON", "CAP_SYS_ADMIN".to_owned()),
        ],
        (documented & !granted_by_sys_admin) | caps::mask([CAP_SYS_ADMIN]),
    )
}

fn packets(samples: &[Sample], source: &str, destination: &str) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == "crossmon_flow_packets_total"
                && s.labels.get("source").map(String::as_str) == Some(source)
                && s.labels.get("destination").map(String::as_str) == Some(destination)
                && s.labels.get("protocol").map(String::as_str) == Some("icmp")
        })
        .map(|s| s.value)
}

#[test]
fn the_sidecar_image_counts_other_containers_by_name_with_the_documented_capabilities() {
    docker_ready();
    let image = SidecarImage::build();

    let network = DockerNetwork::create("sidecar", &[]).expect("network");
    let client = network.run("client");
    let server = network.run("server");

    let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let (mut env, mask) = engine_capabilities();
    env.push(("CROSSMON_IMAGE", image.0.clone()));
    env.push(("CROSSMON_LISTEN", addr.to_string()));
    let compose = Compose {
        project: unique("compose").replace('-', ""),
        env,
    };
    compose.run(&["up", "--detach", "--no-build", "crossmon"]);
    let id = text(compose.run(&["ps", "--quiet", "crossmon"]));
    let sidecar = text(docker(&["inspect", "--format", "{{.Name}}", &id]).expect("inspect"));
    let sidecar = sidecar.trim_start_matches('/');
    wait_until("the sidecar's API", || {
        get(addr, "/healthz").is_some_and(|(status, _)| status == 200)
    });

    let host_config = text(
        docker(&[
            "inspect",
            "--format",
            "{{.HostConfig.Privileged}} {{.HostConfig.NetworkMode}} {{.HostConfig.PidMode}} {{.HostConfig.CapDrop}}",
            &id,
        ])
        .expect("inspect"),
    );
    assert_eq!(host_config, "false host host [ALL]");
    let pid: u32 = text(docker(&["inspect", "--format", "{{.State.Pid}}", &id]).expect("pid"))
        .parse()
        .expect("pid");
    assert_eq!(
        caps::effective(pid),
        mask,
        "the sidecar holds exactly the documented set"
    );

    let attached = |name: &str| {
        get_json(addr, "/api/v1/containers")
            .as_array()
            .is_some_and(|all| {
                all.iter()
                    .any(|c| c["name"] == name && c["attached"] == true)
            })
    };
    wait_until("client and server attached", || {
        attached(&client.name) && attached(&server.name)
    });
    // The sidecar itself is on the host network: listed, never attached.
    let containers = get_json(addr, "/api/v1/containers");
    let own = containers
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == sidecar))
        .unwrap_or_else(|| panic!("{sidecar} not listed: {containers}"));
    assert_eq!(
        (own["network_mode"].as_str(), own["attached"].as_bool()),
        (Some("host"), Some(false))
    );

    let pings = 5;
    client.ping(&server.ip(&network.name).expect("ip"), pings);
    let samples = samples_when(addr, "the pings in the sidecar's /metrics", |samples| {
        packets(samples, &client.name, &server.name) == Some(f64::from(pings))
            && packets(samples, &server.name, &client.name) == Some(f64::from(pings))
    });
    assert!(
        samples.iter().any(|s| s.name == "crossmon_container_info"
            && s.labels.get("container") == Some(&client.name)
            && s.labels.get("network") == Some(&network.name)),
        "client's info series"
    );
    let logs = docker(&["logs", &id]).expect("logs");
    assert!(
        !String::from_utf8_lossy(&logs.stderr).contains("panicked"),
        "the sidecar's log"
    );
}
