//! The kernel's BTF (`/sys/kernel/btf/vmlinux`), read for one thing: where
//! the fields of a struct lie in this kernel (`sk_buff`'s `head` and
//! `network_header` for the drop tracepoint), so no layout is assumed.
//! Members inside anonymous structs and unions (`struct_group`) are found
//! too. Bounds-checked throughout: a damaged file is an error.

use anyhow::{bail, Context as _};

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

/// One type of the file: its kind, name, and where its members start.
struct Type {
    kind: u32,
    name_off: u32,
    vlen: usize,
    kind_flag: bool,
    /// Offset of the first member (structs and unions).
    members_at: usize,
}

pub struct Btf {
    data: Vec<u8>,
    strings_at: usize,
    strings_len: usize,
    /// By id; id 0 is `void`, so index `id - 1`.
    types: Vec<Type>,
}

fn u32_at(data: &[u8], at: usize) -> anyhow::Result<u32> {
    let bytes = data.get(at..at + 4).context("BTF cut short")?;
    Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

impl Btf {
    pub fn from_sys_fs() -> anyhow::Result<Btf> {
        let path = "/sys/kernel/btf/vmlinux";
        Self::parse(std::fs::read(path).with_context(|| format!("reading {path}"))?)
    }

    pub fn parse(data: Vec<u8>) -> anyhow::Result<Btf> {
        let magic = data.get(..2).context("BTF cut short")?;
        if u16::from_le_bytes([magic[0], magic[1]]) != MAGIC {
            bail!("not little-endian BTF");
        }
        let header_len = u32_at(&data, 4)? as usize;
        let types_at = header_len + u32_at(&data, 8)? as usize;
        let types_end = types_at + u32_at(&data, 12)? as usize;
        let strings_at = header_len + u32_at(&data, 16)? as usize;
        let strings_len = u32_at(&data, 20)? as usize;
        if types_end > data.len() || strings_at + strings_len > data.len() {
            bail!("BTF sections beyond the file");
        }
        let mut types = Vec::new();
        let mut at = types_at;
        while at < types_end {
            let info = u32_at(&data, at + 4)?;
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            let extra = match kind {
                1 | 14 | 17 => 4,
                3 => 12,
                4 | 5 | 15 | 19 => 12 * vlen,
                6 | 13 => 8 * vlen,
                2 | 7..=12 | 16 | 18 => 0,
                other => bail!("BTF type kind {other} unknown"),
            };
            types.push(Type {
                kind,
                name_off: u32_at(&data, at)?,
                vlen,
                kind_flag: info >> 31 != 0,
                members_at: at + 12,
            });
            at += 12 + extra;
        }
        Ok(Btf {
            data,
            strings_at,
            strings_len,
            types,
        })
    }

    fn name(&self, offset: u32) -> &[u8] {
        let start = self.strings_at + offset as usize;
        let end = self.strings_at + self.strings_len;
        let rest = self.data.get(start..end).unwrap_or_default();
        rest.split(|b| *b == 0).next().unwrap_or_default()
    }

    /// Byte offset of `member` in the struct named `name`, looking into
    /// anonymous members.
    pub fn member_offset(&self, name: &str, member: &str) -> anyhow::Result<u32> {
        let id = self
            .types
            .iter()
            .position(|t| t.kind == KIND_STRUCT && self.name(t.name_off) == name.as_bytes())
            .with_context(|| format!("no struct {name} in the kernel's BTF"))?;
        self.find(id + 1, member, 0, 0)?
            .with_context(|| format!("no member {member} in struct {name}"))
            .map(|bits| bits / 8)
    }

    /// The bit offset of `member` in type `id`, which sits at `base`.
    fn find(&self, id: usize, member: &str, base: u32, depth: u32) -> anyhow::Result<Option<u32>> {
        let Some(ty) = id.checked_sub(1).and_then(|i| self.types.get(i)) else {
            return Ok(None);
        };
        if !matches!(ty.kind, KIND_STRUCT | KIND_UNION) || depth > 8 {
            return Ok(None);
        }
        for i in 0..ty.vlen {
            let at = ty.members_at + 12 * i;
            let (name_off, member_type, offset) = (
                u32_at(&self.data, at)?,
                u32_at(&self.data, at + 4)?,
                u32_at(&self.data, at + 8)?,
            );
            let bits = base
                + if ty.kind_flag {
                    offset & 0x00ff_ffff
                } else {
                    offset
                };
            let name = self.name(name_off);
            if name == member.as_bytes() {
                return Ok(Some(bits));
            }
            if name.is_empty() {
                if let Some(found) = self.find(member_type as usize, member, bits, depth + 1)? {
                    return Ok(Some(found));
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sk_buff_fields_are_found_in_this_kernel() {
        let btf = Btf::from_sys_fs().expect("the CI kernel has BTF");
        let head = btf.member_offset("sk_buff", "head").expect("head");
        let network = btf
            .member_offset("sk_buff", "network_header")
            .expect("network_header");
        assert!(
            head > 0 && network > 0 && head < 512 && network < 512,
            "{head} {network}"
        );
        assert!(btf.member_offset("sk_buff", "no_such_field").is_err());
        assert!(Btf::parse(vec![0x9f, 0xeb, 1]).is_err());
    }
}
