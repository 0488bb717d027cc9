//! The floor under any TC classifier: a program of two instructions
//! (`r0 = TC_ACT_UNSPEC; exit`, what crossmon returns for every packet it
//! lets through) on the same hooks crossmon uses, TCX ingress and egress
//! of both bench veths. What it costs the traffic is the hook itself (the
//! TCX dispatch, the skb's trip through it), which no change to crossmon's
//! programs can win back.

use std::os::fd::{AsRawFd as _, OwnedFd};

use anyhow::Context as _;

use super::{net::BenchNet, programs};

// From include/uapi/linux/bpf.h.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// `mov64 r0, -1` (TC_ACT_UNSPEC: the next program, or pass), `exit`.
const INSTRUCTIONS: [u64; 2] = [
    u64::from_le_bytes([0xb7, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff]),
    u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
];

/// The program attached while this lives: closing the links detaches it.
pub struct NoopClassifier {
    pub id: u32,
    _links: Vec<OwnedFd>,
}

impl NoopClassifier {
    /// Loads the program and links it to both directions of both bench
    /// veths. TCX only (kernel 6.6+), as crossmon attaches there.
    pub fn attach(net: &BenchNet) -> anyhow::Result<Self> {
        let license = c"GPL";
        // `prog_type, insn_cnt | insns | license`, then fields left zero.
        let mut attr = [0u64; 16];
        attr[0] = u64::from(BPF_PROG_TYPE_SCHED_CLS) | ((INSTRUCTIONS.len() as u64) << 32);
        attr[1] = INSTRUCTIONS.as_ptr() as u64;
        attr[2] = license.as_ptr() as u64;
        let program = programs::owned(programs::bpf(BPF_PROG_LOAD, &mut attr))
            .context("loading the noop classifier")?;
        // `info`: bpf_fd, info_len | info; bpf_prog_info starts type, id.
        let mut info = [0u32; 2];
        let mut attr = [0u64; 2];
        attr[0] = program.as_raw_fd() as u64 | (std::mem::size_of_val(&info) as u64) << 32;
        attr[1] = info.as_mut_ptr() as u64;
        programs::bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)
            .context("reading the noop classifier's id")?;
        let mut links = vec![program];
        for host in &net.hosts {
            let ifindex = std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", host.veth))
                .with_context(|| format!("reading the ifindex of {}", host.veth))?;
            let ifindex: u64 = ifindex.trim().parse().context("parsing an ifindex")?;
            for attach_type in [programs::BPF_TCX_INGRESS, programs::BPF_TCX_EGRESS] {
                // `link_create`: prog_fd | target_ifindex, attach_type |
                // flags, then fields left zero.
                let mut attr = [0u64; 8];
                attr[0] = links[0].as_raw_fd() as u64 | ifindex << 32;
                attr[1] = u64::from(attach_type);
                let link = programs::owned(programs::bpf(BPF_LINK_CREATE, &mut attr))
                    .with_context(|| {
                        format!("linking the noop classifier to {} (TCX, 6.6+)", host.veth)
                    })?;
                links.push(link);
            }
        }
        Ok(Self {
            id: info[1],
            _links: links,
        })
    }
}
