//! The layering ARCHITECTURE.md states, checked: a top-level module uses
//! only modules of lower layers, so there is no import cycle and the
//! order in which to read the code is the order below.

use std::{collections::BTreeMap, fs, path::Path};

/// From the bottom: each module may use the layers below its own.
const LAYERS: &[&[&str]] = &[
    // Model and support: plain data, time, locks, files, bounded series.
    &["model", "clock", "sync", "rotating", "book"],
    // The kernel, the host's links, the HTTP transport.
    &["datapath", "links", "web_config"],
    // Who the containers are.
    &["docker"],
    // Flows aggregated, each poll's view and its consumers' contract;
    // alerts and their sink; the ring's events and their consumers'.
    &["flows", "alert", "event_log"],
    // The poll and event consumers; packet captures (the alerts' evidence).
    &["detect", "dns", "policy", "series", "capture"],
    // What is written out: /metrics collectors, the flow log.
    &["metrics", "flow_log"],
    &["api"],
    // Wiring and commands.
    &["agent", "doctor"],
    &["cli"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// Source without comments and without its `#[cfg(test)]` module.
fn code(text: &str) -> String {
    let text = text
        .find("#[cfg(test)]\nmod tests")
        .map_or(text, |at| &text[..at]);
    text.lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Top-level modules a file's code names through `crate::`.
fn uses(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a::b, c::{d, e}}`: the names at depth 0.
            let mut depth = 0;
            let mut name = String::new();
            let mut expecting = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => expecting = true,
                    c if expecting && depth == 0 && (c.is_alphanumeric() || c == '_') => {
                        name.push(c);
                    }
                    _ if expecting && !name.is_empty() => {
                        found.push(std::mem::take(&mut name));
                        expecting = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
        }
    }
    found
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_uses_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let top = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|name| name.trim_end_matches(".rs").to_owned())
            .expect("a name");
        if matches!(top.as_str(), "lib" | "main" | "layering") {
            continue;
        }
        let layer = layer_of(&top)
            .unwrap_or_else(|| panic!("module {top} is in no layer: add it to LAYERS"));
        let text = fs::read_to_string(&file).expect("readable");
        for used in uses(&code(&text)) {
            if used == top || used == "self" {
                continue;
            }
            let used_layer =
                layer_of(&used).unwrap_or_else(|| panic!("{top} uses {used}, in no layer"));
            if used_layer >= layer {
                wrong
                    .entry(format!("{}", relative.display()))
                    .or_insert_with(Vec::new)
                    .push(used);
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "modules using a module of their own layer or above (see ARCHITECTURE.md): {wrong:?}"
    );
}

#[test]
fn uses_are_found_in_groups_and_paths() {
    let found = uses("use crate::{\n    a::b,\n    c::{d, e},\n    f,\n};\nlet x = crate::g::h();");
    assert_eq!(found, ["a", "c", "f", "g"]);
}
