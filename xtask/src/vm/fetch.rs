//! Debian's stock kernels, fetched once into the user's cache and reused
//! offline after. apt runs with a private configuration (sources, lists,
//! cache, no dpkg status): the host's apt state is neither read for
//! versions nor changed.

use std::{
    collections::{HashMap, HashSet},
    env, fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};

use crate::cmd;

/// Debian's metapackage of its cloud flavour: BTF, a serial console, and
/// small enough to boot fast. It depends on the versioned image package.
const IMAGE_METAPACKAGE: &str = "linux-image-cloud-amd64";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Overrides the mirror found in the host's apt sources.
const MIRROR_ENV: &str = "CROSSMON_DEBIAN_MIRROR";
/// What the tests need that the cloud flavour builds as modules: bridges
/// (with stp and llc), veth pairs, clsact and `tc ... bpf` filters (the
/// legacy attach before TCX), and the drivers of the container interfaces
/// with no end outside (macvlan, ipvlan). Their dependencies are added.
const MODULES: &[&str] = &[
    "bridge",
    "veth",
    "sch_ingress",
    "cls_bpf",
    "macvlan",
    "ipvlan",
];

/// A kernel ready to boot, as cached.
pub struct KernelFiles {
    /// The Debian package it came from (`linux-image-…_VERSION_amd64.deb`).
    pub package: String,
    pub vmlinuz: PathBuf,
    /// Decompressed modules, in load order (dependencies first).
    pub modules: Vec<PathBuf>,
}

/// Files of a cached kernel directory. `PACKAGE` is written last, after
/// the directory was complete, and the directory is renamed into place:
/// an interrupted download never looks cached. `WANTED` is the
/// [`MODULES`] it was extracted for: a cache made for another list lacks
/// a module or carries one no longer asked for, and is fetched again.
const VMLINUZ: &str = "vmlinuz";
const MODULES_DIR: &str = "modules";
const ORDER: &str = "order";
const WANTED: &str = "wanted";
const PACKAGE: &str = "package";

/// The newest cloud kernel of `suite`, from the cache or downloaded.
pub fn kernel(suite: &str) -> anyhow::Result<KernelFiles> {
    let dir = cache_dir()?.join(suite);
    match cached(&dir) {
        Cache::Current => {}
        Cache::Absent => download(suite, &dir)?,
        Cache::OtherModules => {
            println!(
                "the cached kernel in {} was extracted for other modules than {}: fetching it again",
                dir.display(),
                MODULES.join(", ")
            );
            download(suite, &dir)?;
        }
    }
    read_cached(&dir)
}

/// What the cache holds of a suite's kernel.
#[derive(Debug, PartialEq, Eq)]
enum Cache {
    Absent,
    /// A complete download, of other [`MODULES`] than these.
    OtherModules,
    Current,
}

fn cached(dir: &Path) -> Cache {
    if !dir.join(PACKAGE).is_file() {
        return Cache::Absent;
    }
    let wanted = fs::read_to_string(dir.join(MODULES_DIR).join(WANTED)).unwrap_or_default();
    if wanted == wanted_modules() {
        Cache::Current
    } else {
        Cache::OtherModules
    }
}

/// [`MODULES`], one a line, as `WANTED` records them.
fn wanted_modules() -> String {
    MODULES.join("\n") + "\n"
}

/// `$XDG_CACHE_HOME/crossmon/vm`, else `~/.cache/crossmon/vm`.
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    let base = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set: no cache for the VM kernels")?;
    Ok(base.join("crossmon").join("vm"))
}

fn read_cached(dir: &Path) -> anyhow::Result<KernelFiles> {
    let package = read_text(&dir.join(PACKAGE))?.trim().to_owned();
    let order = read_text(&dir.join(MODULES_DIR).join(ORDER))?;
    let modules = order
        .lines()
        .map(|name| dir.join(MODULES_DIR).join(format!("{name}.ko")))
        .collect();
    Ok(KernelFiles {
        package,
        vmlinuz: dir.join(VMLINUZ),
        modules,
    })
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn download(suite: &str, dir: &Path) -> anyhow::Result<()> {
    let mirror = debian_mirror()?;
    println!(
        "fetching {suite}'s newest {IMAGE_METAPACKAGE} from {mirror} into {}",
        dir.display()
    );
    // In the temporary directory, not the cache: apt's download sandbox
    // user (_apt) must reach it, and a home directory is often closed to
    // it. Nothing of apt's state is worth keeping once the kernel is out.
    let work = Scratch::new(&format!("crossmon-vm-{suite}"))?;
    let apt = PrivateApt::new(work.path(), &mirror, suite)?;
    apt.update()?;
    let image = apt.image_package()?;
    let deb = apt.download(&image)?;
    let root = work.path().join("root");
    cmd::status(
        "unpacking the kernel package",
        cmd::command("dpkg-deb").arg("-x").arg(&deb).arg(&root),
    )?;
    let partial = dir.with_extension("partial");
    remove_if_present(&partial)?;
    remove_if_present(dir)?;
    fs::create_dir_all(partial.join(MODULES_DIR))
        .with_context(|| format!("creating {}", partial.display()))?;
    extract(&root, &partial)?;
    let name = deb.file_name().map(|n| n.to_string_lossy().into_owned());
    fs::write(partial.join(PACKAGE), name.unwrap_or(image) + "\n")
        .context("writing the cached kernel's package name")?;
    fs::rename(&partial, dir).with_context(|| format!("moving the kernel to {}", dir.display()))
}

fn remove_if_present(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

/// A directory under the system's temporary directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(prefix: &str) -> anyhow::Result<Self> {
        let path = env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        remove_if_present(&path)?;
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// apt-get and apt-cache on one suite, with every file they read or write
/// under `dir`. With that suite alone in the sources, apt's candidate is
/// its newest version.
struct PrivateApt {
    dir: PathBuf,
    options: Vec<String>,
}

impl PrivateApt {
    fn new(dir: &Path, mirror: &str, suite: &str) -> anyhow::Result<Self> {
        let sources = dir.join("sources.list");
        fs::write(
            &sources,
            format!("deb [signed-by={KEYRING}] {mirror} {suite} main\n"),
        )
        .context("writing the private sources.list")?;
        for sub in ["lists/partial", "cache/archives/partial", "download"] {
            fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating apt's {sub}"))?;
        }
        let path = |sub: &str| dir.join(sub).display().to_string();
        let options = [
            format!("Dir::Etc::SourceList={}", sources.display()),
            "Dir::Etc::SourceParts=/dev/null".to_owned(),
            // The host's pins and installed packages must not steer the
            // choice of version.
            "Dir::Etc::Preferences=/dev/null".to_owned(),
            "Dir::Etc::PreferencesParts=/dev/null".to_owned(),
            "Dir::State::status=/dev/null".to_owned(),
            format!("Dir::State::Lists={}", path("lists")),
            format!("Dir::Cache={}", path("cache")),
            "APT::Architecture=amd64".to_owned(),
            "APT::Architectures=amd64".to_owned(),
            // Only the package lists: no translations, no AppStream data.
            "Acquire::Languages=none".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".to_owned(),
        ]
        .into_iter()
        .flat_map(|option| ["-o".to_owned(), option])
        .collect();
        Ok(Self {
            dir: dir.to_path_buf(),
            options,
        })
    }

    fn apt(&self, program: &str) -> std::process::Command {
        let mut command = cmd::command(program);
        command.arg("-q").args(&self.options);
        command
    }

    fn update(&self) -> anyhow::Result<()> {
        // Without --error-on=any, a list apt could not fetch is a warning
        // and the update succeeds, leaving nothing to pick a kernel from.
        cmd::output(
            "apt-get update (private lists)",
            self.apt("apt-get").args(["update", "--error-on=any"]),
        )
        .map(drop)
        .with_context(|| {
            format!("is the mirror right? {MIRROR_ENV} overrides the one found in /etc/apt")
        })
    }

    /// The versioned image package the metapackage depends on.
    fn image_package(&self) -> anyhow::Result<String> {
        let depends = cmd::output(
            "apt-cache depends",
            self.apt("apt-cache").args(["depends", IMAGE_METAPACKAGE]),
        )?;
        image_dependency(&depends)
            .with_context(|| format!("{IMAGE_METAPACKAGE} depends on no linux-image package"))
    }

    fn download(&self, package: &str) -> anyhow::Result<PathBuf> {
        let into = self.dir.join("download");
        // apt-get download fetches as _apt into the working directory and
        // warns when _apt may not write there; a system without that user
        // gets the warning only.
        let _ = cmd::command("chown").arg("_apt").arg(&into).output();
        cmd::output(
            "apt-get download",
            self.apt("apt-get")
                .arg("download")
                .arg(package)
                .current_dir(&into),
        )?;
        let debs: Vec<PathBuf> = fs::read_dir(&into)
            .context("listing the downloaded package")?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "deb"))
            .collect();
        match debs.as_slice() {
            [deb] => Ok(deb.clone()),
            _ => bail!("apt-get download {package} left {debs:?}, not one .deb"),
        }
    }
}

/// `linux-image-6.1.0-50-cloud-amd64` from `apt-cache depends` output.
fn image_dependency(depends: &str) -> Option<String> {
    depends.lines().find_map(|line| {
        let target = line.trim().strip_prefix("Depends:")?.trim();
        target
            .starts_with("linux-image-")
            .then(|| target.to_owned())
    })
}

/// Copies the image and the needed modules out of the unpacked package
/// `root` into the cache directory `into`.
fn extract(root: &Path, into: &Path) -> anyhow::Result<()> {
    let (release, vmlinuz) = find_vmlinuz(&root.join("boot"))?;
    fs::copy(&vmlinuz, into.join(VMLINUZ)).context("copying vmlinuz")?;
    let modules_root = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|dir| root.join(dir).join(&release))
        .find(|dir| dir.is_dir())
        .with_context(|| format!("no modules directory for {release} in the package"))?;
    let builtin = fs::read_to_string(modules_root.join("modules.builtin")).unwrap_or_default();
    let files = module_files(&modules_root)?;
    let mut loader = ModuleLoader {
        files: &files,
        builtin: &builtin,
        into: &into.join(MODULES_DIR),
        done: HashSet::new(),
        order: Vec::new(),
    };
    for module in MODULES {
        loader.add(module)?;
    }
    let order = loader.order.join("\n") + "\n";
    fs::write(into.join(MODULES_DIR).join(ORDER), order).context("writing the module order")?;
    fs::write(into.join(MODULES_DIR).join(WANTED), wanted_modules())
        .context("writing the modules asked for")
}

/// `boot/vmlinuz-RELEASE`: the path and RELEASE (`uname -r`).
fn find_vmlinuz(boot: &Path) -> anyhow::Result<(String, PathBuf)> {
    for entry in fs::read_dir(boot).context("listing the package's boot/")? {
        let path = entry.context("listing boot/")?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if let Some(release) = name.as_deref().and_then(|n| n.strip_prefix("vmlinuz-")) {
            return Ok((release.to_owned(), path.clone()));
        }
    }
    bail!("no boot/vmlinuz-* in the kernel package")
}

/// Every module file under `dir`, by module name (`_` for `-`, as the
/// kernel and `depends=` spell them).
fn module_files(dir: &Path) -> anyhow::Result<HashMap<String, PathBuf>> {
    let mut files = HashMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry.context("listing modules")?.path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if let Some(module) = name.as_deref().and_then(module_name) {
                files.insert(module, path.clone());
            }
        }
    }
    Ok(files)
}

/// `bridge` from `bridge.ko`, `bridge.ko.xz` or `bridge.ko.zst`.
fn module_name(file: &str) -> Option<String> {
    let stem = [".ko", ".ko.xz", ".ko.zst"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))?;
    Some(stem.replace('-', "_"))
}

/// Copies modules into the cache, dependencies first.
struct ModuleLoader<'a> {
    files: &'a HashMap<String, PathBuf>,
    /// `modules.builtin`: modules compiled into this kernel.
    builtin: &'a str,
    into: &'a Path,
    done: HashSet<String>,
    order: Vec<String>,
}

impl ModuleLoader<'_> {
    fn add(&mut self, module: &str) -> anyhow::Result<()> {
        if !self.done.insert(module.to_owned()) {
            return Ok(());
        }
        let Some(source) = self.files.get(module) else {
            if is_builtin(self.builtin, module) {
                return Ok(());
            }
            bail!("the kernel package has no module {module}, and it is not built in");
        };
        let bytes = decompressed(source)?;
        for dependency in module_dependencies(&bytes) {
            self.add(&dependency)?;
        }
        let target = self.into.join(format!("{module}.ko"));
        fs::write(&target, &bytes).with_context(|| format!("writing {}", target.display()))?;
        self.order.push(module.to_owned());
        Ok(())
    }
}

fn is_builtin(builtin: &str, module: &str) -> bool {
    builtin.lines().any(|line| {
        line.rsplit('/')
            .next()
            .and_then(module_name)
            .is_some_and(|name| name == module)
    })
}

/// The module's bytes, decompressed: busybox's insmod takes plain `.ko`
/// files only (Debian compresses them with xz from 6.12 on).
fn decompressed(path: &Path) -> anyhow::Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else {
        return fs::read(path).with_context(|| format!("reading {name}"));
    };
    let output = cmd::command(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("running {tool} to decompress {name}"))?;
    if !output.status.success() {
        bail!("{tool} -dc {name} failed ({})", output.status);
    }
    Ok(output.stdout)
}

/// The `depends=a,b` entry of the module's `.modinfo` section (a
/// NUL-separated list of `key=value`), read without modinfo, which a
/// minimal host lacks.
fn module_dependencies(module: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = module.windows(KEY.len()).position(|window| window == KEY) else {
        return Vec::new();
    };
    let value = &module[at + KEY.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|name| !name.is_empty())
        .map(|name| name.replace('-', "_"))
        .collect()
}

/// The Debian mirror to fetch from: `$CROSSMON_DEBIAN_MIRROR`, else the
/// host's own apt source for a Debian release (`bookworm`, not
/// `bookworm-security` or `-updates`, which live elsewhere or carry no
/// older suites).
fn debian_mirror() -> anyhow::Result<String> {
    if let Some(mirror) = env::var(MIRROR_ENV).ok().filter(|m| !m.trim().is_empty()) {
        return Ok(mirror.trim().trim_end_matches('/').to_owned());
    }
    let mut sources = Vec::new();
    let mut read = |path: &Path| {
        if let Ok(text) = fs::read_to_string(path) {
            let deb822 = path.extension().is_some_and(|ext| ext == "sources");
            sources.extend(if deb822 {
                deb822_sources(&text)
            } else {
                one_line_sources(&text)
            });
        }
    };
    read(Path::new("/etc/apt/sources.list"));
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        paths
            .iter()
            .filter(|p| {
                p.extension()
                    .is_some_and(|ext| ext == "list" || ext == "sources")
            })
            .for_each(|p| read(p));
    }
    sources
        .into_iter()
        .find(Source::serves_a_release)
        .map(|source| source.uri.trim_end_matches('/').to_owned())
        .with_context(|| {
            format!(
                "no Debian release mirror in /etc/apt/sources.list or /etc/apt/sources.list.d; \
                 set {MIRROR_ENV} to the URI of a Debian mirror"
            )
        })
}

/// One `deb` source: where, and which suites.
#[derive(Debug, PartialEq, Eq)]
struct Source {
    uri: String,
    suites: Vec<String>,
}

impl Source {
    /// A mirror of the main archive: it serves a plain release suite over
    /// the network (a `-security` or `-updates` suite alone does not say).
    fn serves_a_release(&self) -> bool {
        let networked = ["http://", "https://", "ftp://"]
            .iter()
            .any(|scheme| self.uri.starts_with(scheme));
        let release = self
            .suites
            .iter()
            .any(|suite| !suite.is_empty() && !suite.contains(['-', '/']));
        networked && release && !self.uri.trim_end_matches('/').ends_with("-security")
    }
}

/// `deb [options] URI SUITE COMPONENT…` lines (`deb-src` and comments skipped).
fn one_line_sources(text: &str) -> Vec<Source> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next()?.trim();
            let rest = line.strip_prefix("deb ")?.trim_start();
            // Options are bracketed and may hold spaces.
            let rest = match rest.strip_prefix('[') {
                Some(options) => options.split_once(']')?.1.trim_start(),
                None => rest,
            };
            let mut words = rest.split_whitespace();
            let uri = words.next()?.to_owned();
            let suite = words.next()?.to_owned();
            Some(Source {
                uri,
                suites: vec![suite],
            })
        })
        .collect()
}

/// deb822 stanzas (`Types:`, `URIs:`, `Suites:`, `Enabled:`), blank-line
/// separated; continuation lines (an embedded key, say) are skipped.
fn deb822_sources(text: &str) -> Vec<Source> {
    let mut sources = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields: HashMap<String, String> = HashMap::new();
        for line in stanza.lines() {
            if line.starts_with('#') || line.starts_with(char::is_whitespace) {
                continue;
            }
            if let Some((key, value)) = line.split_once(':') {
                fields.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
            }
        }
        let field = |key: &str| fields.get(key).map(String::as_str).unwrap_or_default();
        let enabled = !field("enabled").eq_ignore_ascii_case("no");
        if !enabled || !field("types").split_whitespace().any(|t| t == "deb") {
            continue;
        }
        let suites: Vec<String> = field("suites")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        for uri in field("uris").split_whitespace() {
            sources.push(Source {
                uri: uri.to_owned(),
                suites: suites.clone(),
            });
        }
    }
    sources
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_mirror_is_found_in_deb822_sources() {
        let text = "Types: deb\n# a snapshot\nURIs: http://mirror.example/debian\n\
                    Suites: bookworm bookworm-updates\nComponents: main\n\
                    Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
                    Types: deb\nURIs: http://mirror.example/debian-security\n\
                    Suites: bookworm-security\nComponents: main\n";
        let sources = deb822_sources(text);
        assert_eq!(sources.len(), 2);
        let release: Vec<&Source> = sources.iter().filter(|s| s.serves_a_release()).collect();
        assert_eq!(release.len(), 1);
        assert_eq!(release[0].uri, "http://mirror.example/debian");
    }

    #[test]
    fn disabled_stanzas_security_and_source_lines_are_skipped() {
        let deb822 = "Types: deb\nEnabled: no\nURIs: http://a.example/debian\nSuites: trixie\n\n\
                      Types: deb-src\nURIs: http://b.example/debian\nSuites: trixie\n";
        assert!(deb822_sources(deb822).is_empty());
        let list = "# deb http://c.example/debian bookworm main\n\
                    deb-src http://d.example/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://e.example/debian-security bookworm-security main\n\
                    deb [ arch=amd64 ] http://f.example/debian/ bookworm main contrib\n";
        let sources = one_line_sources(list);
        let found: Vec<&str> = sources
            .iter()
            .filter(|s| s.serves_a_release())
            .map(|s| s.uri.as_str())
            .collect();
        assert_eq!(found, ["http://f.example/debian/"]);
    }

    #[test]
    fn the_image_package_is_the_metapackages_dependency() {
        let depends = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-50-cloud-amd64\n";
        assert_eq!(
            image_dependency(depends).as_deref(),
            Some("linux-image-6.1.0-50-cloud-amd64")
        );
        assert_eq!(image_dependency("x\n  Depends: initramfs-tools\n"), None);
    }

    #[test]
    fn module_dependencies_come_from_modinfo() {
        let module = b"\x7fELF...\0license=GPL\0depends=stp,llc\0intree=Y\0";
        assert_eq!(module_dependencies(module), ["stp", "llc"]);
        assert!(module_dependencies(b"\0depends=\0name=veth\0").is_empty());
        assert_eq!(
            module_name("sch_ingress.ko.xz").as_deref(),
            Some("sch_ingress")
        );
        assert_eq!(
            module_name("nf-conntrack.ko").as_deref(),
            Some("nf_conntrack")
        );
        assert!(is_builtin("kernel/net/ipv6/ipv6.ko\n", "ipv6"));
    }

    #[test]
    fn a_cache_made_for_other_modules_is_not_current() {
        let dir = env::temp_dir().join(format!("crossmon-vm-cache-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join(MODULES_DIR)).unwrap();
        assert_eq!(cached(&dir), Cache::Absent);
        fs::write(dir.join(PACKAGE), "linux-image-x.deb\n").unwrap();
        // A cache from before the list was recorded.
        assert_eq!(cached(&dir), Cache::OtherModules);
        let wanted = dir.join(MODULES_DIR).join(WANTED);
        fs::write(&wanted, "bridge\nveth\nsch_ingress\ncls_bpf\n").unwrap();
        assert_eq!(cached(&dir), Cache::OtherModules);
        fs::write(&wanted, wanted_modules()).unwrap();
        assert_eq!(cached(&dir), Cache::Current);
        let _ = fs::remove_dir_all(&dir);
    }
}
