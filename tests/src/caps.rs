//! Capability sets: what a process holds, and `setpriv` to start one with
//! exactly a given set.

/// The effective capabilities of process `pid` (`CapEff` of its status).
pub fn effective(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|err| panic!("reading /proc/{pid}/status: {err}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no CapEff in /proc/{pid}/status"))
}

/// The mask of the capabilities numbered `bits`.
pub fn mask(bits: impl IntoIterator<Item = u32>) -> u64 {
    bits.into_iter().fold(0, |all, bit| all | 1 << bit)
}

/// `setpriv` arguments that leave root exactly the capabilities `names`
/// (`CAP_BPF` or `bpf`) and nothing to inherit: root in a container started
/// with `--cap-drop ALL --cap-add ...`. setpriv execs the program, which
/// keeps its pid.
pub fn setpriv_only(names: &[&str]) -> Vec<String> {
    let bounding = names.iter().fold("-all".to_owned(), |set, name| {
        let name = name.trim_start_matches("CAP_").to_lowercase();
        format!("{set},+{name}")
    });
    vec![
        "setpriv".to_owned(),
        "--inh-caps=-all".to_owned(),
        format!("--bounding-set={bounding}"),
    ]
}
