//! What test binaries report: the sums of their `test result:` lines, for
//! the host's `cargo test` and the VMs' consoles alike.

/// Sums of the `test result:` lines of every test binary, and the names
/// of the tests they did not run.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct Totals {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    /// Each `test NAME ... ignored` line's NAME.
    pub ignored_tests: Vec<String>,
}

impl Totals {
    pub fn ran(&self) -> u64 {
        self.passed + self.failed + self.ignored
    }

    /// Adds `line` when it is a `test result:` line; whether it was. A
    /// `test NAME ... ignored[, reason]` line adds NAME to the tests not run.
    pub fn observe(&mut self, line: &str) -> bool {
        let line = line.trim_end();
        if let Some((name, verdict)) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.split_once(" ... "))
        {
            if verdict == "ignored" || verdict.starts_with("ignored, ") {
                self.ignored_tests.push(name.to_owned());
            }
            return false;
        }
        match line.strip_prefix("test result: ") {
            Some(result) => {
                self.add(result);
                true
            }
            None => false,
        }
    }

    /// Adds `ok. 5 passed; 0 failed; 1 ignored; 0 measured; 2 filtered out;
    /// finished in 0.01s` (after `test result: `).
    fn add(&mut self, result: &str) {
        let counts = result.split_once(". ").map_or(result, |(_, counts)| counts);
        for part in counts.split(';') {
            let mut words = part.split_whitespace();
            let (Some(count), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match what {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}

impl std::ops::AddAssign for Totals {
    fn add_assign(&mut self, other: Self) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
        self.ignored_tests.extend(other.ignored_tests);
    }
}

impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} ignored",
            self.passed, self.failed, self.ignored
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_result_lines() {
        let mut totals = Totals::default();
        assert!(totals.observe(
            "test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; 2 filtered out; finished in 0.01s",
        ));
        // A VM's serial console ends its lines with `\r\n`.
        assert!(totals.observe(
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.50s\r",
        ));
        assert!(!totals.observe("test a ... ok"));
        assert_eq!(totals.to_string(), "8 passed, 2 failed, 1 ignored");
        let mut sum = Totals::default();
        sum += totals.clone();
        sum += totals;
        assert_eq!(sum.ran(), 22);
    }

    #[test]
    fn ignored_tests_are_named_with_or_without_a_reason() {
        let mut totals = Totals::default();
        totals.observe("test short::many ... ignored, not yet exact under load");
        totals.observe("test src/lib.rs - f (line 3) ... ignored\r");
        totals.observe("test a ... ok");
        totals.observe("test b ... FAILED");
        assert_eq!(
            totals.ignored_tests,
            ["short::many", "src/lib.rs - f (line 3)"]
        );
    }
}
