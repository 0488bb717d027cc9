//! Writing samples in the Prometheus text format, for the families large
//! enough that building the client library's protobuf objects for every
//! series (and sorting them) would dominate a scrape.

use std::fmt::Write as _;

pub fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

pub fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, text)) in labels.iter().enumerate() {
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
    let _ = writeln!(out, " {value}");
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
        let mut out = String::new();
        header(&mut out, "x_total", "An x.", "counter");
        sample(&mut out, "x_total", &[("a", "q\"\\\nz"), ("b", "")], 7);
        sample(&mut out, "y", &[], 0);
        assert_eq!(
            out,
            "# HELP x_total An x.\n# TYPE x_total counter\nx_total{a=\"q\\\"\\\\\\nz\",b=\"\"} 7\ny 0\n"
        );
    }
}
