//! A pcapng writer: a Section Header Block, one Interface Description Block
//! per veth, Enhanced Packet Blocks. Written by hand: the format is a few
//! fixed little-endian blocks, and the capture streams each block as soon
//! as it is made (the `pcap-file` crate's writer wants a `Write` it owns,
//! which an HTTP body stream is not, and one more dependency tree for sixty
//! lines is not worth it).
//!
//! Reference: draft-ietf-opsawg-pcapng (blocks 0x0A0D0D0A, 1, 6).

/// LINKTYPE_ETHERNET: the programs see Ethernet frames on the veth.
const LINKTYPE_ETHERNET: u16 = 1;
const SHB: u32 = 0x0A0D_0D0A;
const IDB: u32 = 1;
const EPB: u32 = 6;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;

const OPT_END: u16 = 0;
const SHB_USERAPPL: u16 = 4;
const IF_NAME: u16 = 2;
const IF_DESCRIPTION: u16 = 3;
/// Timestamps in 10^-9 s: the programs stamp packets in nanoseconds.
const IF_TSRESOL: u16 = 9;
const TSRESOL_NANOSECONDS: u8 = 9;
const EPB_FLAGS: u16 = 2;

/// `epb_flags` direction bits (0-1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketDirection {
    Inbound = 1,
    Outbound = 2,
}

/// A block: type, total length, body, total length again.
fn block(kind: u32, body: &[u8]) -> Vec<u8> {
    let total = u32::try_from(12 + body.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(12 + body.len());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&total.to_le_bytes());
    out
}

/// Appends `bytes` and zeros up to a multiple of four.
fn padded(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn option(out: &mut Vec<u8>, code: u16, value: &[u8]) {
    // Longer values are cut: an option's length is 16 bits.
    let value = &value[..value.len().min(usize::from(u16::MAX) & !3)];
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(&u16::try_from(value.len()).unwrap_or(0).to_le_bytes());
    padded(out, value);
}

fn end_of_options(out: &mut Vec<u8>) {
    out.extend_from_slice(&OPT_END.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
}

/// The Section Header Block that starts the file.
pub fn section_header() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&BYTE_ORDER_MAGIC.to_le_bytes());
    body.extend_from_slice(&1u16.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    // Section length unknown: the file is streamed.
    body.extend_from_slice(&(-1i64).to_le_bytes());
    option(
        &mut body,
        SHB_USERAPPL,
        concat!("crossmon ", env!("CARGO_PKG_VERSION")).as_bytes(),
    );
    end_of_options(&mut body);
    block(SHB, &body)
}

/// An interface; packets name it by its position among those written.
pub fn interface(name: &str, description: &str, snaplen: u32) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&snaplen.to_le_bytes());
    option(&mut body, IF_NAME, name.as_bytes());
    option(&mut body, IF_DESCRIPTION, description.as_bytes());
    option(&mut body, IF_TSRESOL, &[TSRESOL_NANOSECONDS]);
    end_of_options(&mut body);
    block(IDB, &body)
}

/// One packet: `data` as captured, `original_len` as it was on the wire,
/// `unix_ns` nanoseconds since the Unix epoch.
pub fn packet(
    interface_id: u32,
    unix_ns: u64,
    data: &[u8],
    original_len: u32,
    direction: PacketDirection,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(32 + data.len());
    body.extend_from_slice(&interface_id.to_le_bytes());
    // The timestamp's high 32 bits first, each half in the section's order.
    body.extend_from_slice(&((unix_ns >> 32) as u32).to_le_bytes());
    body.extend_from_slice(&(unix_ns as u32).to_le_bytes());
    let captured = u32::try_from(data.len()).unwrap_or(u32::MAX);
    body.extend_from_slice(&captured.to_le_bytes());
    body.extend_from_slice(&original_len.max(captured).to_le_bytes());
    padded(&mut body, data);
    option(&mut body, EPB_FLAGS, &(direction as u32).to_le_bytes());
    end_of_options(&mut body);
    block(EPB, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn blocks_are_framed_by_their_length_and_padded_to_four() {
        for block in [
            section_header(),
            interface("web", "veth1234 of web", 1600),
            packet(0, 1, &[1, 2, 3], 60, PacketDirection::Inbound),
        ] {
            assert_eq!(block.len() % 4, 0);
            assert_eq!(u32_at(&block, 4) as usize, block.len());
            assert_eq!(u32_at(&block, block.len() - 4) as usize, block.len());
        }
    }

    #[test]
    fn a_packet_carries_its_lengths_time_and_direction() {
        let unix_ns = 1_764_000_000_123_456_789u64;
        let block = packet(2, unix_ns, &[0xaa; 5], 1514, PacketDirection::Outbound);
        assert_eq!(u32_at(&block, 0), EPB);
        assert_eq!(u32_at(&block, 8), 2);
        let time = (u64::from(u32_at(&block, 12)) << 32) | u64::from(u32_at(&block, 16));
        assert_eq!(time, unix_ns);
        assert_eq!(u32_at(&block, 20), 5);
        assert_eq!(u32_at(&block, 24), 1514);
        assert_eq!(&block[28..33], &[0xaa; 5]);
        // Data padded to 8 bytes, then epb_flags.
        assert_eq!(&block[36..40], &[2, 0, 4, 0]);
        assert_eq!(u32_at(&block, 40), 2);
    }
}
