//! Instructions per packet type: the `datapath_cost` bench run in a VM of
//! each supported kernel whose clock counts instructions (qemu's `-icount
//! shift=0`, one instruction a nanosecond), so that its "ns per run" are
//! the x86 instructions the guest ran for one run of a program on that
//! packet: the program's own, the kernel code it calls (map lookups,
//! helpers) and the test run's loop around it. Unlike the timings they do
//! not move with the host's load or speed: a change that adds work to a
//! packet type shows here on any machine, for the same kernel packages and
//! qemu.

use std::{collections::HashMap, fmt::Write as _, path::Path};

use anyhow::ensure;

use crate::vm::{self, Kernel};

pub const BENCH: &str = "datapath_cost";

/// The section's heading in `BENCHMARKS.md` and on the terminal.
pub const TITLE: &str = "Instructions per packet type, counted by qemu";

pub const ABOUT: &str = "The cost per packet type bench above (`tests/benches/datapath_cost.rs \
     --instructions`) run in a VM of each supported kernel, Debian's own package, under qemu's \
     emulation with `-icount shift=0`: the guest's clock advances one nanosecond per instruction \
     it runs, so the kernel's timing of each BPF_PROG_TEST_RUN reads instructions. Each figure is \
     the x86 instructions the guest ran for one run of the program on that packet: the JITed \
     program's own, the kernel's code it calls (map lookups, helpers) and the test run's loop \
     around it (the same in every row of repeated runs; a single run's row carries the kernel's \
     start and stop of its timing too, as the row of the same packets once counted shows). \
     Unlike the timings they do not move with this machine's load or speed: a change that adds \
     or removes work for a packet type shows here. The two-CPU row is left out (its instructions \
     are those of the row above it), and the verifier's counts follow for each kernel, whose \
     verifiers differ.";

/// What each kernel's VM printed.
pub struct Instructions {
    kernels: Vec<(Kernel, vm::Counted)>,
}

/// Boots each supported kernel in turn (about 40 s each under emulation)
/// to run `datapath_cost`, built at `executable`.
pub fn run(crossmon: &Path, executable: &Path) -> anyhow::Result<Instructions> {
    let staged = vm::stage_bench(crossmon, BENCH, executable)?;
    let mut kernels = Vec::new();
    for kernel in Kernel::ALL {
        println!("==> instructions per packet type on kernel {kernel}, counted by qemu");
        let counted = vm::count_instructions(kernel, &staged, BENCH, &["--instructions"])?;
        ensure!(
            !tables(&counted.output).is_empty(),
            "{BENCH} printed no table in kernel {kernel}'s VM"
        );
        kernels.push((kernel, counted));
    }
    Ok(Instructions { kernels })
}

impl Instructions {
    /// The kernels' packages, then each of the bench's tables with a
    /// column per kernel.
    pub fn markdown(&self) -> String {
        let mut md = String::from("Kernels (Debian's packages):\n\n");
        for (kernel, counted) in &self.kernels {
            let _ = writeln!(md, "- {kernel}: `{}`", counted.package);
        }
        let columns: Vec<String> = self.kernels.iter().map(|(k, _)| k.to_string()).collect();
        let outputs: Vec<Vec<Vec<&str>>> = self
            .kernels
            .iter()
            .map(|(_, counted)| tables(&counted.output))
            .collect();
        let count = outputs.iter().map(Vec::len).max().unwrap_or(0);
        for i in 0..count {
            let same_table: Vec<&[&str]> = outputs
                .iter()
                .map(|tables| tables.get(i).map_or(&[][..], Vec::as_slice))
                .collect();
            md.push('\n');
            md.push_str(&merge(&columns, &same_table));
        }
        md
    }
}

/// The Markdown tables in a program's output: runs of lines that start
/// with `|`, a new table wherever a rule follows a header.
fn tables(lines: &[String]) -> Vec<Vec<&str>> {
    let mut tables: Vec<Vec<&str>> = Vec::new();
    let mut in_table = false;
    for line in lines {
        let line = line.trim();
        let is_row = line.starts_with('|');
        if is_row && !in_table {
            tables.push(Vec::new());
        }
        in_table = is_row;
        let Some(table) = tables.last_mut().filter(|_| is_row) else {
            continue;
        };
        if is_rule(line) && table.len() > 1 {
            let header = table.pop();
            tables.push(header.into_iter().collect());
        }
        if let Some(table) = tables.last_mut() {
            table.push(line);
        }
    }
    tables
}

/// `|---|---:|`: a table's rule.
fn is_rule(line: &str) -> bool {
    cells(line)
        .iter()
        .all(|cell| !cell.is_empty() && cell.chars().all(|c| c == '-' || c == ':'))
}

fn cells(line: &str) -> Vec<&str> {
    line.trim_matches('|').split('|').map(str::trim).collect()
}

/// One table of several runs (a header, its rule, rows), a column for each
/// run, titled by `columns`: its rows are the leading cells whose rule is
/// left-aligned (the row's name), its figures the right-aligned ones,
/// shown in a cell as `a / b / c` when there are several (the caption says
/// which). A row a run lacks reads `-`.
fn merge(columns: &[String], tables: &[&[&str]]) -> String {
    let Some(first) = tables.iter().find(|table| table.len() >= 2) else {
        return String::new();
    };
    let header = cells(first[0]);
    let names = cells(first[1])
        .iter()
        .take_while(|rule| !rule.ends_with(':'))
        .count();
    let figures = &header[names.min(header.len())..];
    let mut md = String::new();
    if figures.len() > 1 {
        let _ = writeln!(md, "Each kernel's cell: {}.\n", figures.join(" / "));
    }
    let _ = write!(md, "| {} |", header[..names].join(" | "));
    for column in columns {
        let _ = write!(md, " {column} |");
    }
    md.push('\n');
    md.push_str(&"|---".repeat(names));
    md.push_str(&"|---:".repeat(columns.len()));
    md.push_str("|\n");
    let mut order: Vec<String> = Vec::new();
    let mut by_row: HashMap<String, Vec<String>> = HashMap::new();
    for (run, table) in tables.iter().enumerate() {
        for row in table.iter().skip(2) {
            let row = cells(row);
            let name = row[..names.min(row.len())].join(" | ");
            let figures = row[names.min(row.len())..].join(" / ");
            let values = by_row.entry(name.clone()).or_insert_with(|| {
                order.push(name);
                vec!["-".to_owned(); tables.len()]
            });
            values[run] = figures;
        }
    }
    for name in order {
        let _ = writeln!(md, "| {name} | {} |", by_row[&name].join(" | "));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn each_runs_tables_merge_into_one_column_per_run() {
        let old = lines(
            "[    3.1] a kernel warning\n\
             | packet | program | instructions per run |\n\
             |---|---|---:|\n\
             | UDP | `from_container` | 775 |\n\
             | bridged | `to_container` | n/a: refused |\n\
             \n\
             | program | verified | JITed bytes |\n\
             |---|---:|---:|\n\
             | `from_container` | 17075 | 18594 |\n",
        );
        let new = lines(
            "| packet | program | instructions per run |\n\
             |---|---|---:|\n\
             | UDP | `from_container` | 760 |\n\
             | bridged | `to_container` | 126 |\n\
             | SYN | `from_container` | 1765 |\n\
             | program | verified | JITed bytes |\n\
             |---|---:|---:|\n\
             | `from_container` | 18100 | 19301 |\n",
        );
        let columns = ["5.10".to_owned(), "6.12".to_owned()];
        let (old, new) = (tables(&old), tables(&new));
        // A table's end is its last `|` line, whether a blank line or
        // another table's header follows.
        assert_eq!((old.len(), new.len()), (1 + 1, 1 + 1));
        assert_eq!(new[0].len(), 5);
        assert_eq!(
            merge(&columns, &[&old[0], &new[0]]),
            "| packet | program | 5.10 | 6.12 |\n\
             |---|---|---:|---:|\n\
             | UDP | `from_container` | 775 | 760 |\n\
             | bridged | `to_container` | n/a: refused | 126 |\n\
             | SYN | `from_container` | - | 1765 |\n"
        );
        assert_eq!(
            merge(&columns, &[&old[1], &new[1]]),
            "Each kernel's cell: verified / JITed bytes.\n\n\
             | program | 5.10 | 6.12 |\n\
             |---|---:|---:|\n\
             | `from_container` | 17075 / 18594 | 18100 / 19301 |\n"
        );
    }
}
