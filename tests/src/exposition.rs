//! Reading the agent's `/metrics` text: the samples, by name and labels.

use std::{collections::BTreeMap, net::SocketAddr};

use crate::agent::get;

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// `/metrics` of the agent at `addr`, as text (panics unless 200).
pub fn scrape(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "GET /metrics: {body}");
    body
}

/// The samples of the agent at `addr` once `ready` holds for them.
pub fn samples_when(
    addr: SocketAddr,
    what: &str,
    ready: impl Fn(&[Sample]) -> bool,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    crate::agent::wait_until(what, || {
        samples = parse(&scrape(addr));
        ready(&samples)
    });
    samples
}

/// Every sample line of an exposition (comments skipped). Label values
/// may hold escaped quotes and backslashes.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| parse_line(line).unwrap_or_else(|| panic!("unparsable sample: {line}")))
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let Some(open) = line.find('{') else {
        let (name, value) = line.split_once(' ')?;
        return Some(Sample {
            name: name.to_owned(),
            labels: BTreeMap::new(),
            value: value.trim().parse().ok()?,
        });
    };
    let mut labels = BTreeMap::new();
    let mut rest = &line[open + 1..];
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return Some(Sample {
                name: line[..open].to_owned(),
                labels,
                value: after.trim().parse().ok()?,
            });
        }
        let (label, quoted) = rest.split_once("=\"")?;
        let (value, after) = unquote(quoted)?;
        labels.insert(label.to_owned(), value);
        rest = after;
    }
}

/// The label value up to its closing quote, unescaped, and what follows.
fn unquote(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
    None
}

/// Sum of the samples of `name` whose labels include every `(label, value)`.
pub fn sum(samples: &[Sample], name: &str, matching: &[(&str, &str)]) -> f64 {
    select(samples, name, matching).map(|s| s.value).sum()
}

/// The samples of `name` whose labels include every `(label, value)`.
pub fn select<'a>(
    samples: &'a [Sample],
    name: &'a str,
    matching: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = &'a Sample> + 'a {
    samples.iter().filter(move |s| {
        s.name == name
            && matching
                .iter()
                .all(|(label, value)| s.labels.get(*label).map(String::as_str) == Some(*value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_parse_with_escapes() {
        let samples =
            parse("# HELP x X.\nx_total{a=\"1\",b=\"q\\\"u,o}te\"} 3\nplain 4.5\nempty{} 1\n");
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].labels["b"], "q\"u,o}te");
        assert_eq!(samples[0].labels["a"], "1");
        assert_eq!(sum(&samples, "x_total", &[("a", "1")]), 3.0);
        assert_eq!(samples[1].value, 4.5);
        assert!(samples[2].labels.is_empty());
    }
}
