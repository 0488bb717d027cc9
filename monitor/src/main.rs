fn main() -> anyhow::Result<()> {
    static OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/crossmon"));
    let mut ebpf = aya::EbpfLoader::new().load(OBJ)?;
    for (name, prog) in ebpf.programs_mut() {
        let p: &mut aya::programs::SchedClassifier = prog.try_into()?;
        match p.load() { Ok(()) => println!("{name} loaded"), Err(e) => { println!("{name}: {e:?}"); } }
    }
    Ok(())
}
