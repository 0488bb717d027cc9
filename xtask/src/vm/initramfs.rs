//! The VMs' root file system, an initramfs: static busybox for the shell
//! and mounts, iproute2's `ip` and `tc` (busybox's `ip` makes no veth
//! pairs), iputils' `ping` (the one the tests were written against), the
//! agent and the test binaries with the libraries `ldd` names,
//! and an init that runs the steps. It is two cpio archives back to back,
//! which the kernel unpacks in turn: one shared by every kernel, then that
//! kernel's modules and init (its steps may differ).

use std::{
    fs::{self, File},
    io,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{bail, Context as _};

use super::{Step, MARKER};
use crate::cmd;

/// busybox applets the init script and the tests call (`ip netns exec …
/// cat` reads a namespace's MAC address).
const APPLETS: &[&str] = &[
    "sh", "mount", "mkdir", "insmod", "poweroff", "cat", "echo", "env", "uname", "ls", "sleep",
    "dmesg",
];

/// Where the test binaries are, inside the VM.
pub const TESTS_DIR: &str = "/tests";
pub const CROSSMON: &str = "/bin/crossmon";

/// The shared part: builds `dir/root` with the agent and `programs` (the
/// test binaries, or a bench) under [`TESTS_DIR`] by name, and archives it
/// as `dir/common.cpio`.
pub fn common(
    dir: &Path,
    crossmon: &Path,
    programs: &[(String, PathBuf)],
) -> anyhow::Result<PathBuf> {
    let root = dir.join("root");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    for sub in [
        "bin", "proc", "sys", "dev", "tmp", "run", "root", "tests", "etc",
    ] {
        fs::create_dir_all(root.join(sub)).with_context(|| format!("creating /{sub}"))?;
    }
    // `ip netns` and the tests use /var/run/netns.
    fs::create_dir_all(root.join("var")).context("creating /var")?;
    symlink_if_absent("../run", &root.join("var/run"))?;
    let busybox = cmd::find_program("busybox").context("no busybox: install busybox-static")?;
    install(&root, &busybox, Path::new("/bin/busybox"), false)?;
    for applet in APPLETS {
        symlink_if_absent("busybox", &root.join("bin").join(applet))?;
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("tc", "iproute2"),
        ("ping", "iputils-ping"),
    ] {
        let path =
            cmd::find_program(tool).with_context(|| format!("no {tool}: install {package}"))?;
        install(&root, &path, &Path::new("/bin").join(tool), false)?;
    }
    install(&root, crossmon, Path::new(CROSSMON), true)?;
    for (name, path) in programs {
        install(&root, path, &Path::new(TESTS_DIR).join(name), true)?;
    }
    let archive = dir.join("common.cpio");
    cpio(&root, &archive)?;
    Ok(archive)
}

/// The initramfs for one kernel: the shared archive, then one of `modules`
/// under `/modules` (their load order in `/modules/order`) and the init
/// running `steps`.
pub fn for_kernel(
    common: &Path,
    modules: &[PathBuf],
    steps: &[Step],
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let root = dir.join("root");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    let into = root.join("modules");
    fs::create_dir_all(&into).with_context(|| format!("creating {}", into.display()))?;
    let mut order = String::new();
    for module in modules {
        let name = module.file_name().context("a module path without a name")?;
        fs::copy(module, into.join(name))
            .with_context(|| format!("copying {}", module.display()))?;
        order += name.to_string_lossy().trim_end_matches(".ko");
        order.push('\n');
    }
    fs::write(into.join("order"), order).context("writing /modules/order")?;
    let init = root.join("init");
    fs::write(&init, init_script(steps)).context("writing /init")?;
    set_executable(&init)?;
    let own = dir.join("own.cpio");
    cpio(&root, &own)?;
    let initramfs = dir.join("initramfs.cpio");
    let mut out =
        File::create(&initramfs).with_context(|| format!("creating {}", initramfs.display()))?;
    for part in [common, own.as_path()] {
        let mut input = File::open(part).with_context(|| format!("opening {}", part.display()))?;
        io::copy(&mut input, &mut out)
            .with_context(|| format!("writing {}", initramfs.display()))?;
    }
    Ok(initramfs)
}

fn symlink_if_absent(target: &str, link: &Path) -> anyhow::Result<()> {
    if link.symlink_metadata().is_ok() {
        return Ok(());
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} to {target}", link.display()))
}

fn set_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

/// Copies the program `source` to `target` (a path inside the VM) and the
/// libraries it links to the same paths as on the host. `strip` drops the
/// debug information: a debug build's test binary shrinks from about
/// 170 MB to 10.
fn install(root: &Path, source: &Path, target: &Path, strip: bool) -> anyhow::Result<()> {
    let to = inside(root, target);
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    if strip {
        cmd::status(
            &format!("stripping {}", source.display()),
            cmd::command("objcopy")
                .arg("--strip-debug")
                .arg(source)
                .arg(&to),
        )?;
    } else {
        fs::copy(source, &to).with_context(|| format!("copying {}", source.display()))?;
    }
    set_executable(&to)?;
    for library in libraries(source)? {
        let to = inside(root, &library);
        if to.exists() {
            continue;
        }
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        // fs::copy follows the symlinks (`libc.so.6` -> `libc-2.36.so`).
        fs::copy(&library, &to).with_context(|| format!("copying {}", library.display()))?;
    }
    Ok(())
}

/// `root` + the absolute path `path`.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// The shared libraries `ldd` lists for `program`, the dynamic loader
/// included; none for a static program (ldd then fails).
fn libraries(program: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let output = cmd::command("ldd")
        .arg(program)
        .output()
        .with_context(|| format!("running ldd on {}", program.display()))?;
    if !output.status.success() {
        return Ok(Vec::new());
    }
    let listing = String::from_utf8_lossy(&output.stdout);
    let libraries = ldd_paths(&listing);
    if listing.contains("not found") {
        bail!(
            "ldd {}: a library is missing:\n{listing}",
            program.display()
        );
    }
    Ok(libraries)
}

/// Paths in `ldd` lines: `libc.so.6 => /lib/…/libc.so.6 (0x…)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x…)`; the vDSO has none.
fn ldd_paths(listing: &str) -> Vec<PathBuf> {
    listing
        .lines()
        .filter_map(|line| {
            let after_arrow = line.split_once("=>").map_or(line, |(_, path)| path);
            let path = after_arrow.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Archives the tree `root` as a newc cpio (the kernel's format) at
/// `archive`, owned by root. Left uncompressed: a gzipped one (a third of
/// the size) reached init no sooner under emulation, about 4 s either way.
fn cpio(root: &Path, archive: &Path) -> anyhow::Result<()> {
    let out = File::create(archive).with_context(|| format!("creating {}", archive.display()))?;
    // find lists a directory before its contents, as cpio must.
    cmd::status(
        "archiving the initramfs with cpio",
        cmd::command("sh")
            .args([
                "-c",
                "find . -print0 | cpio --null --create --format=newc --owner=0:0 --quiet",
            ])
            .current_dir(root)
            .stdout(Stdio::from(out)),
    )
}

/// pid 1: mounts what the tests need, loads the modules, then runs each
/// step between markers the host reads on the console, and powers off.
/// Where a step is the doctor, its debug log goes first to the second
/// serial port, which the host writes to a file of its own and shows when
/// the doctor fails; through a pipe, as on a terminal it would be
/// coloured.
fn init_script(steps: &[Step]) -> String {
    let mut script = format!(
        r#"#!/bin/sh
# pid 1 of a test VM, written by `cargo xtask test` (xtask/src/vm).
export PATH=/bin HOME=/root CROSSMON_BIN={CROSSMON}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t bpf bpf /sys/fs/bpf
while read -r module; do
    insmod "/modules/$module.ko" || echo "{MARKER} insmod-failed $module"
done < /modules/order
ip link set lo up
echo "{MARKER} kernel $(uname -r)"
step() {{
    name=$1
    shift
    echo "{MARKER} begin $name"
    "$@"
    echo "{MARKER} end $name $?"
}}
"#
    );
    if steps.iter().any(|step| step.name == "doctor") {
        script += &format!("RUST_LOG=debug {CROSSMON} doctor 2>&1 | cat >/dev/ttyS1\n");
    }
    for step in steps {
        script += &format!("step {} {}\n", step.name, step.shell_command());
    }
    script += &format!("echo \"{MARKER} done\"\npoweroff -f\n");
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_vm_running_the_doctor_writes_its_debug_log() {
        let step = |name: &'static str| Step {
            name,
            argv: vec![format!("/tests/{name}")],
        };
        let debug_log = "doctor 2>&1 | cat >/dev/ttyS1";
        assert!(init_script(&[step("doctor"), step("fuzz")]).contains(debug_log));
        assert!(!init_script(&[step("datapath_cost")]).contains(debug_log));
    }

    #[test]
    fn ldd_lines_give_library_paths() {
        let listing = "\tlinux-vdso.so.1 (0x00007fb7ab65c000)\n\
                       \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fb7a961e000)\n\
                       \t/lib64/ld-linux-x86-64.so.2 (0x00007fb7ab65e000)\n";
        assert_eq!(
            ldd_paths(listing),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }
}
