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

use crate::vm::{self, Kernel};

pub const BENCH: &str = "datapath_cost";

/// The section's heading in `BENCHMARKS.md` and on the terminal.
pub const TITLE: &str = "Instructions per packet type, counted by qemu";

pub const ABOUT: &str = "The cost per packet type bench above (`tests/benches/datapath_cost.rs \
     --instructions`) run in a VM of each supported kernel, Debian's own package, under qemu's \
     emulation with `-icount shift=0`: the guest's clock advances one nanosecond per instruction \
     it runs, so the kernel's timing of each BPF_PROG_TEST_RUN reads instructions (its mean per \
     run, rounded down). Each figure is the x86 instructions the guest ran for one run of the \
     program on that packet: the JITed program's own, the kernel's code it calls (map lookups, \
     helpers) and the test run's loop around it (54 instructions a run on 6.1 for a program of \
     two; a single run's row carries the kernel's start and stop of its timing too, as the row of \
     the same packets once counted shows). Interrupts that land inside a timed run are counted \
     too: the tick's adds about one instruction a run to the repeated rows. qemu counts each \
     iteration of a string instruction (`rep movsb`), so a figure holds for the same kernel \
     package and qemu version (here 7.2, `-cpu max`). They count work, not its price (a clock \
     read or a cache miss costs more than its instructions), and they do not move with this \
     machine's load or speed: a change that adds or removes work for a packet type shows here. \
     The two-CPU row is left out, the VMs having one CPU, and the verifier's counts follow for \
     each kernel, whose verifiers differ.";

/// What each kernel's VM printed, or why it failed.
pub struct Instructions {
    kernels: Vec<(Kernel, Result<vm::Counted, String>)>,
}

/// Boots each supported kernel in turn (about 20 s each under emulation)
/// to run `datapath_cost`, built at `executable`. A kernel that fails is
/// reported in the table's place, the others still run.
pub fn run(crossmon: &Path, executable: &Path) -> anyhow::Result<Instructions> {
    let staged = vm::stage_bench(crossmon, BENCH, executable)?;
    let mut kernels = Vec::new();
    for kernel in Kernel::ALL {
        println!("==> instructions per packet type on kernel {kernel}, counted by qemu");
        let counted = vm::count_instructions(kernel, &staged, BENCH, &["--instructions"])
            .and_then(|counted| {
                anyhow::ensure!(
                    !tables(&counted.output).is_empty(),
                    "{BENCH} printed no table"
                );
                Ok(counted)
            })
            .map_err(|err| format!("{err:#}"));
        if let Err(err) = &counted {
            println!("kernel {kernel}: {err}");
        }
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
            let _ = match counted {
                Ok(counted) => writeln!(md, "- {kernel}: `{}`", counted.package),
                Err(err) => writeln!(md, "- {kernel}: failed: {err}"),
            };
        }
        let columns: Vec<String> = self.kernels.iter().map(|(k, _)| k.to_string()).collect();
        let parsed: Vec<Vec<Vec<&str>>> = self
            .kernels
            .iter()
            .map(|(_, counted)| {
                counted
                    .as_ref()
                    .map_or_else(|_| Vec::new(), |c| tables(&c.output))
            })
            .collect();
        // Each table by its header, in the order the kernels print them.
        let mut by_header: Vec<(&str, Vec<&[&str]>)> = Vec::new();
        for (run, kernel_tables) in parsed.iter().enumerate() {
            for table in kernel_tables {
                let index = match by_header.iter().position(|(h, _)| *h == table[0]) {
                    Some(index) => index,
                    None => {
                        by_header.push((table[0], vec![&[][..]; parsed.len()]));
                        by_header.len() - 1
                    }
                };
                by_header[index].1[run] = table;
            }
        }
        for (_, same_table) in &by_header {
            md.push('\n');
            md.push_str(&merge(&columns, same_table));
        }
        md
    }

    /// Whether a kernel's VM failed to give its table.
    pub fn failed(&self) -> bool {
        self.kernels.iter().any(|(_, counted)| counted.is_err())
    }
}

/// The Markdown tables in a program's output, each its header, rule and
/// rows. A blank line ends a table, a header and its rule start one; other
/// lines amid a table (a kernel's warning on the console) are passed over.
fn tables(lines: &[String]) -> Vec<Vec<&str>> {
    let mut tables: Vec<Vec<&str>> = Vec::new();
    let mut open = false;
    let mut last_row: Option<&str> = None;
    for line in lines.iter().map(|line| line.trim()) {
        if line.is_empty() {
            (open, last_row) = (false, None);
        } else if !line.starts_with('|') {
            continue;
        } else if is_rule(line) {
            if let Some(header) = last_row.take() {
                if open {
                    // Taken as the open table's row: it heads the next.
                    tables.last_mut().and_then(Vec::pop);
                }
                tables.push(vec![header, line]);
                open = true;
            }
        } else {
            if open {
                if let Some(table) = tables.last_mut() {
                    table.push(line);
                }
            }
            last_row = Some(line);
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
        .count()
        .min(header.len());
    let figures = &header[names..];
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
             [    4.2] another, amid the table\n\
             | bridged | `to_container` | n/a: refused |\n\
             \n\
             | program | verified | JITed bytes |\n\
             |---|---:|---:|\n\
             | `from_container` | 17075 | 18594 |\n",
        );
        let new = lines(
            "| program | verified | JITed bytes |\n\
             |---|---:|---:|\n\
             | `from_container` | 18100 | 19301 |\n\
             | packet | program | instructions per run |\n\
             |---|---|---:|\n\
             | UDP | `from_container` | 760 |\n\
             | bridged | `to_container` | 126 |\n\
             | SYN | `from_container` | 1765 |\n\
             \n\
             | a row after a blank line, in no table |\n",
        );
        let (old, new) = (tables(&old), tables(&new));
        // A warning amid a table is passed over; a header and its rule
        // start a table even with no blank line before them.
        assert_eq!(old.len(), 2);
        assert_eq!(old[0].len(), 4);
        assert_eq!(new.len(), 2);
        assert_eq!(new[0].len(), 3);
        assert_eq!(new[1].len(), 5);
        let columns = ["5.10".to_owned(), "6.12".to_owned()];
        assert_eq!(
            merge(&columns, &[old[0].as_slice(), new[1].as_slice()]),
            "| packet | program | 5.10 | 6.12 |\n\
             |---|---|---:|---:|\n\
             | UDP | `from_container` | 775 | 760 |\n\
             | bridged | `to_container` | n/a: refused | 126 |\n\
             | SYN | `from_container` | - | 1765 |\n"
        );
        assert_eq!(
            merge(&columns, &[old[1].as_slice(), new[0].as_slice()]),
            "Each kernel's cell: verified / JITed bytes.\n\n\
             | program | 5.10 | 6.12 |\n\
             |---|---:|---:|\n\
             | `from_container` | 17075 / 18594 | 18100 / 19301 |\n"
        );
    }

    #[test]
    fn tables_are_matched_by_header_and_a_failed_kernel_is_named() {
        let counted = |text: &str| {
            Ok(vm::Counted {
                package: "linux-image".to_owned(),
                output: lines(text),
            })
        };
        let instructions = Instructions {
            kernels: vec![
                (Kernel::V5_10, counted("| p | n |\n|---|---:|\n| a | 1 |\n")),
                (Kernel::V6_1, Err("killed after 900 s".to_owned())),
                (
                    Kernel::V6_12,
                    counted(
                        "| q | m |\n|---|---:|\n| b | 3 |\n\n| p | n |\n|---|---:|\n| a | 2 |\n",
                    ),
                ),
            ],
        };
        assert!(instructions.failed());
        let md = instructions.markdown();
        assert!(md.contains("- 6.1: failed: killed after 900 s\n"), "{md}");
        assert!(md.contains("| a | 1 | - | 2 |\n"), "{md}");
        assert!(md.contains("| b | - | - | 3 |\n"), "{md}");
    }
}
