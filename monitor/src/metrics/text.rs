//! The one writer of the Prometheus text format (0.0.4) every collector
//! writes with: no intermediate objects per series, so a scrape of tens of
//! thousands of traffic series costs what writing their lines costs.

use std::fmt::Write as _;

/// `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample value: counts are written exactly, measurements as decimals.
pub trait Value {
    fn write(&self, out: &mut String);
}

impl Value for u64 {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for usize {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for u32 {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for f64 {
    fn write(&self, out: &mut String) {
        if self.is_nan() {
            out.push_str("NaN");
        } else if self.is_infinite() {
            out.push_str(if *self > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            let _ = write!(out, "{self}");
        }
    }
}

/// The text of one scrape.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// A family. Its `HELP` and `TYPE` lines are written with its first
    /// sample, so a family without samples (no containers yet) is not
    /// exposed at all.
    pub fn family<'a>(&'a mut self, name: &'a str, help: &'a str, kind: Kind) -> Family<'a> {
        Family {
            out: &mut self.out,
            name,
            help,
            kind,
            started: false,
        }
    }

    pub fn into_text(self) -> String {
        self.out
    }
}

/// The samples of one family, written as they come.
pub struct Family<'a> {
    out: &'a mut String,
    name: &'a str,
    help: &'a str,
    kind: Kind,
    started: bool,
}

impl Family<'_> {
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Value) {
        self.line("", labels, None, value);
    }

    /// One series of a histogram: cumulative counts per upper bound, the
    /// sum and the count of every observation.
    pub fn histogram(
        &mut self,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) {
        let mut le = String::new();
        for (bound, count) in buckets {
            le.clear();
            bound.write(&mut le);
            self.line("_bucket", labels, Some(&le), *count);
        }
        self.line("_bucket", labels, Some("+Inf"), count);
        self.line("_sum", labels, None, sum);
        self.line("_count", labels, None, count);
    }

    fn line(&mut self, suffix: &str, labels: &[(&str, &str)], le: Option<&str>, value: impl Value) {
        if !self.started {
            self.started = true;
            let (name, help, kind) = (self.name, self.help, self.kind.name());
            let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        }
        let out = &mut *self.out;
        out.push_str(self.name);
        out.push_str(suffix);
        let le = le.map(|le| ("le", le));
        let mut pairs = labels.iter().copied().chain(le).peekable();
        if pairs.peek().is_some() {
            out.push('{');
            for (i, (label, text)) in pairs.enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(label);
                out.push_str("=\"");
                escape(out, text);
                out.push('"');
            }
            out.push('}');
        }
        out.push(' ');
        value.write(out);
        out.push('\n');
    }
}

/// Label values escape backslash, double quote and line feed.
fn escape(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_written_with_escaped_label_values() {
        let mut text = Exposition::new();
        let mut x = text.family("x_total", "An x.", Kind::Counter);
        x.sample(&[("a", "q\"\\\nz"), ("b", "")], 7u64);
        text.family("y", "A y.", Kind::Gauge).sample(&[], 0.5);
        assert_eq!(
            text.into_text(),
            "# HELP x_total An x.\n# TYPE x_total counter\nx_total{a=\"q\\\"\\\\\\nz\",b=\"\"} 7\n\
             # HELP y A y.\n# TYPE y gauge\ny 0.5\n"
        );
    }

    #[test]
    fn a_family_without_samples_is_not_written() {
        let mut text = Exposition::new();
        text.family("empty", "Nothing.", Kind::Gauge);
        assert_eq!(text.into_text(), "");
    }

    #[test]
    fn histograms_have_buckets_sum_and_count() {
        let mut text = Exposition::new();
        text.family("t_seconds", "T.", Kind::Histogram).histogram(
            &[],
            &[(0.5, 1), (1.0, 3)],
            1.75,
            3,
        );
        assert_eq!(
            text.into_text(),
            "# HELP t_seconds T.\n# TYPE t_seconds histogram\nt_seconds_bucket{le=\"0.5\"} 1\n\
             t_seconds_bucket{le=\"1\"} 3\nt_seconds_bucket{le=\"+Inf\"} 3\nt_seconds_sum 1.75\n\
             t_seconds_count 3\n"
        );
    }
}
