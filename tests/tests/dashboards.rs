//! The Grafana dashboards in `dashboards/`, checked the two ways a machine
//! without Grafana can: the files themselves (no root), and every PromQL
//! expression of every panel and alerting rule against a real Prometheus
//! scraping crossmon while containers talk and one of them scans another.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use integration_tests::{
    agent::{wait_until, Agent},
    docker::{docker, docker_ready, DockerNetwork},
    prometheus::{prometheus_installed, Prometheus, Scrape},
};
use promql_parser::{
    parser::{self, Expr, VectorSelector},
    util::{walk_expr, ExprVisitor},
};
use serde_json::Value;

/// Panel types of a stock Grafana 10/11 that the dashboards use.
const PANEL_TYPES: [&str; 5] = ["bargauge", "piechart", "stat", "table", "timeseries"];
const GRID_COLUMNS: u64 = 24;
const DATASOURCES: &str = "dashboards/provisioning/datasources/crossmon.yml";
const PROVIDERS: &str = "dashboards/provisioning/dashboards/crossmon.yml";
const RULES: &str = "deploy/prometheus/crossmon-alerts.yml";
/// How long a panel may take to show data once the scan was alerted:
/// connections are counted when their payload samples settle, rates need
/// two scrapes.
const PATIENCE: Duration = Duration::from_secs(30);

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(path: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&read(&repo(path))).unwrap_or_else(|e| panic!("{path}: {e}"))
}

struct Dashboard {
    file: String,
    json: Value,
}

/// One query of one panel.
struct Target<'a> {
    panel: &'a Value,
    expr: &'a str,
}

impl Dashboard {
    /// Every `dashboards/*.json`, by file name.
    fn all() -> Vec<Dashboard> {
        let dir = repo("dashboards");
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("directory entry").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
            .collect();
        paths.sort();
        assert!(!paths.is_empty(), "no dashboard in {}", dir.display());
        paths
            .iter()
            .map(|path| Dashboard {
                file: path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into(),
                json: serde_json::from_str(&read(path))
                    .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display())),
            })
            .collect()
    }

    fn uid(&self) -> &str {
        self.json["uid"].as_str().unwrap_or_default()
    }

    /// Rows and panels, those nested in collapsed rows included.
    fn all_panels(&self) -> Vec<&Value> {
        self.json["panels"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|panel| {
                std::iter::once(panel).chain(panel["panels"].as_array().into_iter().flatten())
            })
            .collect()
    }

    fn panels(&self) -> Vec<&Value> {
        let mut panels = self.all_panels();
        panels.retain(|panel| panel["type"] != "row");
        panels
    }

    fn targets(&self) -> Vec<Target<'_>> {
        self.panels()
            .into_iter()
            .flat_map(|panel| {
                panel["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(move |target| Target {
                        panel,
                        expr: target["expr"].as_str().unwrap_or_default(),
                    })
            })
            .collect()
    }

    fn variables(&self) -> &[Value] {
        self.json["templating"]["list"]
            .as_array()
            .map_or(&[], Vec::as_slice)
    }

    /// `file / panel title`, to name what failed.
    fn name(&self, panel: &Value) -> String {
        format!("{} / {}", self.file, panel["title"].as_str().unwrap_or("?"))
    }
}

fn text<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field].as_str().unwrap_or_default().trim()
}

/// The dashboard variables `text` refers to (`$name`, `${name}`,
/// `${name:format}`), Grafana's own `$__...` apart. `$1` in a
/// `label_replace` is no variable.
fn variables_in(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let name = match rest.strip_prefix('{') {
            Some(braced) => braced
                .split(['}', ':'])
                .next()
                .unwrap_or_default()
                .to_owned(),
            None => rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect(),
        };
        if !name.starts_with("__") && name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            found.insert(name);
        }
    }
    found
}

/// `url` strings anywhere in `value` (data links, dashboard links).
fn urls(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            for (key, field) in fields {
                match (key.as_str(), field) {
                    ("url", Value::String(url)) => found.push(url.clone()),
                    _ => urls(field, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| urls(item, found)),
        _ => {}
    }
}

fn provisioned_datasource_uid() -> String {
    let sources = yaml(DATASOURCES)["datasources"].clone();
    let sources = sources.as_sequence().expect("a `datasources` list");
    assert_eq!(sources.len(), 1, "{DATASOURCES}: one data source");
    assert_eq!(sources[0]["type"].as_str(), Some("prometheus"));
    sources[0]["uid"]
        .as_str()
        .expect("the data source has a uid")
        .to_owned()
}

fn provisioned_dashboard_path() -> String {
    let providers = yaml(PROVIDERS)["providers"].clone();
    let providers = providers.as_sequence().expect("a `providers` list");
    assert_eq!(providers.len(), 1, "{PROVIDERS}: one provider");
    assert_eq!(providers[0]["type"].as_str(), Some("file"));
    providers[0]["options"]["path"]
        .as_str()
        .expect("the provider has options.path")
        .to_owned()
}

/// What a careful reviewer checks in a dashboard file, for all of them at
/// once; every problem is listed.
#[test]
fn dashboards_are_complete_and_use_the_provisioned_data_source() {
    let uid = provisioned_datasource_uid();
    let dashboards = Dashboard::all();
    let mut problems = Vec::new();
    let (mut uids, mut titles) = (BTreeSet::new(), BTreeSet::new());
    for dashboard in &dashboards {
        let (file, json) = (&dashboard.file, &dashboard.json);
        if dashboard.uid().is_empty() || !uids.insert(dashboard.uid()) {
            problems.push(format!("{file}: missing or duplicate uid"));
        }
        if text(json, "title").is_empty() || !titles.insert(text(json, "title")) {
            problems.push(format!("{file}: missing or duplicate title"));
        }
        if json["schemaVersion"].as_u64().is_none() {
            problems.push(format!("{file}: no schemaVersion"));
        }
        // A dashboard exported for sharing asks for its data source at
        // import; a provisioned one must name it.
        if json.get("__inputs").is_some() || json.to_string().contains("${DS_") {
            problems.push(format!(
                "{file}: import placeholders (__inputs, ${{DS_...}})"
            ));
        }
        let mut ids = BTreeSet::new();
        for panel in dashboard.all_panels() {
            if !panel["id"].as_u64().is_some_and(|id| ids.insert(id)) {
                problems.push(format!(
                    "{}: missing or duplicate id",
                    dashboard.name(panel)
                ));
            }
            problems
                .extend(layout_problems(panel).map(|p| format!("{}: {p}", dashboard.name(panel))));
        }
        for panel in dashboard.panels() {
            let name = dashboard.name(panel);
            problems.extend(
                query_problems(panel, &uid)
                    .into_iter()
                    .map(|p| format!("{name}: {p}")),
            );
        }
        problems.extend(variable_problems(dashboard, &uid));
        problems.extend(link_problems(dashboard, &dashboards));
    }
    let path = provisioned_dashboard_path();
    let readme = read(&repo("dashboards/README.md"));
    for (what, value) in [("dashboard folder", &path), ("data source uid", &uid)] {
        if !readme.contains(value.as_str()) {
            problems.push(format!(
                "dashboards/README.md does not give the {what} {value}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A row or panel: titled, described, on the grid.
fn layout_problems(panel: &Value) -> impl Iterator<Item = String> {
    let grid = &panel["gridPos"];
    let cell = |field: &str| grid[field].as_u64();
    let fits = match (cell("x"), cell("y"), cell("w"), cell("h")) {
        (Some(x), Some(_), Some(w), Some(h)) => w > 0 && h > 0 && x + w <= GRID_COLUMNS,
        _ => false,
    };
    let described = !text(panel, "title").is_empty() && !text(panel, "description").is_empty();
    [
        (!fits).then(|| format!("gridPos missing or off the grid: {grid}")),
        (!described).then(|| "a title and a description are required".to_owned()),
    ]
    .into_iter()
    .flatten()
}

/// A panel (not a row): a known type, a unit, queries on the provisioned
/// data source.
fn query_problems(panel: &Value, uid: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if !PANEL_TYPES.contains(&text(panel, "type")) {
        problems.push(format!("unknown panel type {}", panel["type"]));
    }
    if panel["datasource"]["uid"] != uid {
        problems.push(format!("data source is not {uid}"));
    }
    if text(&panel["fieldConfig"]["defaults"], "unit").is_empty() {
        problems.push("no unit".to_owned());
    }
    let targets = panel["targets"].as_array().map_or(&[][..], Vec::as_slice);
    if targets.is_empty() {
        problems.push("no query".to_owned());
    }
    for target in targets {
        if text(target, "expr").is_empty() || text(target, "refId").is_empty() {
            problems.push("a query without expr or refId".to_owned());
        }
        if target["datasource"]["uid"] != uid {
            problems.push(format!("a query's data source is not {uid}"));
        }
    }
    problems
}

/// Variables: an `instance` one, each a query on the provisioned data
/// source, each used, none used undefined.
fn variable_problems(dashboard: &Dashboard, uid: &str) -> Vec<String> {
    let file = &dashboard.file;
    let mut problems = Vec::new();
    let defined: BTreeSet<&str> = dashboard
        .variables()
        .iter()
        .map(|v| text(v, "name"))
        .collect();
    if !defined.contains("instance") {
        problems.push(format!("{file}: no `instance` variable"));
    }
    let mut used: BTreeSet<String> = dashboard
        .targets()
        .iter()
        .flat_map(|target| variables_in(target.expr))
        .collect();
    for variable in dashboard.variables() {
        let name = text(variable, "name");
        if variable["datasource"]["uid"] != uid {
            problems.push(format!("{file}: variable {name}: data source is not {uid}"));
        }
        let definition = text(variable, "definition");
        if definition.is_empty() || variable["query"] != definition {
            problems.push(format!("{file}: variable {name}: no query"));
        }
        used.extend(variables_in(definition));
    }
    for unknown in used.iter().filter(|v| !defined.contains(v.as_str())) {
        problems.push(format!("{file}: ${unknown} is used but not defined"));
    }
    for unused in defined.iter().filter(|v| !used.contains(**v)) {
        problems.push(format!(
            "{file}: variable {unused} is defined but never used"
        ));
    }
    problems
}

/// Links to a dashboard (`/d/UID/...?var-NAME=...`) name one that exists,
/// and variables it has.
fn link_problems(dashboard: &Dashboard, dashboards: &[Dashboard]) -> Vec<String> {
    let mut links = Vec::new();
    urls(&dashboard.json, &mut links);
    let mut problems = Vec::new();
    for url in links.iter().filter(|url| url.starts_with("/d/")) {
        let uid = url[3..].split(['/', '?']).next().unwrap_or_default();
        let Some(target) = dashboards.iter().find(|d| d.uid() == uid) else {
            problems.push(format!(
                "{}: link to unknown dashboard {url}",
                dashboard.file
            ));
            continue;
        };
        let query = url.split_once('?').map_or("", |(_, query)| query);
        let unknown = query
            .split('&')
            .filter_map(|parameter| parameter.strip_prefix("var-"))
            .filter_map(|setting| setting.split('=').next())
            .filter(|name| !target.variables().iter().any(|v| text(v, "name") == *name));
        for name in unknown {
            problems.push(format!(
                "{}: {url} sets unknown variable {name}",
                dashboard.file
            ));
        }
    }
    problems
}

/// The vector selectors of an expression, those inside range selectors
/// included.
struct Selectors(Vec<VectorSelector>);

impl ExprVisitor for Selectors {
    type Error = Infallible;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Infallible> {
        match expr {
            Expr::VectorSelector(selector) => self.0.push(selector.clone()),
            Expr::MatrixSelector(range) => self.0.push(range.vs.clone()),
            _ => {}
        }
        Ok(true)
    }
}

/// For each selector of `promql`, `count(metric{label!="", ...})` over the
/// labels it matches on: it has data only if the metric is exported with
/// every one of those labels, whatever values the scenario produced.
fn presence_queries(promql: &str) -> Result<Vec<String>, String> {
    let expr = parser::parse(promql)?;
    let mut selectors = Selectors(Vec::new());
    let Ok(_) = walk_expr(&mut selectors, &expr);
    Ok(selectors
        .0
        .iter()
        .filter_map(|selector| {
            let name = selector.name.as_deref()?;
            let labels: BTreeSet<String> = selector
                .matchers
                .matchers
                .iter()
                .filter(|matcher| matcher.name != "__name__")
                .map(|matcher| format!("{}!=\"\"", matcher.name))
                .collect();
            let labels = labels.into_iter().collect::<Vec<_>>().join(", ");
            Some(format!("count({name}{{{labels}}})"))
        })
        .collect())
}

/// `$name` and `${name}` replaced by `values[name]`.
fn substitute(expr: &str, values: &BTreeMap<&str, String>) -> String {
    // Longest first, so that no name is replaced inside a longer one.
    let mut names: Vec<&&str> = values.keys().collect();
    names.sort_by_key(|name| std::cmp::Reverse(name.len()));
    names.into_iter().fold(expr.to_owned(), |expr, name| {
        expr.replace(&format!("${{{name}}}"), &values[name])
            .replace(&format!("${name}"), &values[name])
    })
}

/// One expression to send to Prometheus, and what must come back.
struct Check {
    what: String,
    promql: String,
    /// A panel must show data in the scenario; an alerting rule's condition
    /// need not hold, so only its selectors must (see `presence_queries`).
    needs_data: bool,
}

/// What the live test set up, as Grafana's variables would see it.
struct Scenario {
    instance: String,
    network: String,
    /// The containers, the one a single-value `container` shows first.
    containers: [String; 3],
    scrape: Duration,
    /// `$__range`: since Prometheus started.
    range: String,
}

impl Scenario {
    /// A variable's value, and the values its own query must list.
    fn value(&self, variable: &Value) -> (String, Vec<String>) {
        match text(variable, "name") {
            // One Docker host, scraped without deploy/swarm/prometheus.yml:
            // no node label, nothing to list; All (`.*`) still matches.
            "node" => (text(variable, "allValue").to_owned(), Vec::new()),
            "instance" => (self.instance.clone(), vec![self.instance.clone()]),
            "network" => (self.network.clone(), vec![self.network.clone()]),
            // All: Grafana's regex of every listed value.
            "container" if variable["multi"] == true => (
                format!("({})", self.containers.join("|")),
                self.containers.to_vec(),
            ),
            "container" => (self.containers[0].clone(), vec![self.containers[0].clone()]),
            other => panic!("no scenario value for ${other}"),
        }
    }

    /// Every variable of `dashboard` with its value.
    fn values<'a>(&self, dashboard: &'a Dashboard) -> BTreeMap<&'a str, String> {
        dashboard
            .variables()
            .iter()
            .map(|variable| (text(variable, "name"), self.value(variable).0))
            .collect()
    }

    /// Grafana's own variables for `panel`. PromQL durations have no
    /// fractions, hence milliseconds.
    fn builtins(&self, panel: &Value) -> [(&'static str, String); 3] {
        let scrape = self.scrape.as_millis();
        let interval = match text(panel, "interval") {
            "" => format!("{scrape}ms"),
            minimum => minimum.to_owned(),
        };
        [
            ("__rate_interval", format!("{}ms", 4 * scrape)),
            ("__interval", interval),
            ("__range", self.range.clone()),
        ]
    }
}

/// Each variable's `label_values(selector, label)` lists the scenario's
/// values.
fn listing_problems(
    prometheus: &Prometheus,
    dashboard: &Dashboard,
    scenario: &Scenario,
) -> Vec<String> {
    let values = scenario.values(dashboard);
    let mut problems = Vec::new();
    for variable in dashboard.variables() {
        let what = format!("{}: variable {}", dashboard.file, text(variable, "name"));
        let query = substitute(text(variable, "definition"), &values);
        let Some((selector, label)) = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
        else {
            problems.push(format!(
                "{what}: not label_values(selector, label): {query}"
            ));
            continue;
        };
        let label = label.trim();
        let listed: BTreeSet<String> = prometheus
            .try_query(&format!("count by ({label}) ({selector})"))
            .unwrap_or_default()
            .into_iter()
            .filter_map(|sample| sample.labels.get(label).cloned())
            .collect();
        let (_, expected) = scenario.value(variable);
        for value in expected.iter().filter(|v| !listed.contains(*v)) {
            problems.push(format!("{what}: {value} not listed by {query}"));
        }
    }
    problems
}

fn panel_checks(dashboard: &Dashboard, scenario: &Scenario) -> Vec<Check> {
    let values = scenario.values(dashboard);
    dashboard
        .targets()
        .iter()
        .map(|target| {
            let mut values = values.clone();
            values.extend(scenario.builtins(target.panel));
            Check {
                what: dashboard.name(target.panel),
                promql: substitute(target.expr, &values),
                needs_data: true,
            }
        })
        .collect()
}

fn rule_checks() -> Vec<Check> {
    let rules = yaml(RULES);
    let groups = rules["groups"].as_sequence().expect("rule groups");
    groups
        .iter()
        .flat_map(|group| group["rules"].as_sequence().expect("rules"))
        .map(|rule| Check {
            what: format!("rule {}", rule["alert"].as_str().unwrap_or("?")),
            promql: rule["expr"].as_str().expect("rule expr").to_owned(),
            needs_data: false,
        })
        .collect()
}

/// The presence query of every distinct selector of `checks` (see
/// `presence_queries`), and what could not be taken apart.
fn presence_checks(checks: &[Check]) -> (Vec<Check>, Vec<String>) {
    let mut users: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut problems = Vec::new();
    for check in checks {
        if let Some(left) = variables_in(&check.promql).first() {
            problems.push(format!("{}: ${left} left unsubstituted", check.what));
            continue;
        }
        match presence_queries(&check.promql) {
            Ok(queries) => {
                for query in queries {
                    users.entry(query).or_default().push(&check.what);
                }
            }
            Err(error) => problems.push(format!(
                "{}: promql-parser refuses {}: {error}",
                check.what, check.promql
            )),
        }
    }
    let presence = users
        .into_iter()
        .map(|(promql, users)| Check {
            what: format!("a selector of {}", users.join(", ")),
            promql,
            needs_data: true,
        })
        .collect();
    (presence, problems)
}

/// The checks Prometheus refused, or that found no data by the deadline,
/// each with what it last got. Asked again every `pause`: connections are
/// counted once their payload samples settle, and rates need two scrapes.
fn unanswered(prometheus: &Prometheus, checks: Vec<Check>, pause: Duration) -> Vec<String> {
    let deadline = Instant::now() + PATIENCE;
    let mut pending: Vec<(Check, String)> = checks
        .into_iter()
        .map(|check| (check, String::new()))
        .collect();
    loop {
        pending.retain_mut(|(check, last)| match prometheus.try_query(&check.promql) {
            Err(error) => {
                *last = format!("refused: {error}");
                true
            }
            Ok(samples) if check.needs_data && samples.iter().all(|s| s.value.is_nan()) => {
                *last = format!("no data: {samples:?}");
                true
            }
            Ok(_) => false,
        });
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(pause);
    }
    pending
        .iter()
        .map(|(check, last)| format!("{}: {last}\n    {}", check.what, check.promql))
        .collect()
}

/// Every panel of every dashboard, and every alerting rule, against a real
/// Prometheus scraping the agent while three containers talk (pings all
/// along, cleartext HTTP, TCP sessions to a database) and the web container
/// scans 30 closed ports of the database (`port_scan`).
///
/// Dashboard variables take the values Grafana would give them there:
/// `instance` the agent, `network` the test network, a single-value
/// `container` the web container and a multi-value one All (the three
/// names as a regex alternation); `$__rate_interval` four scrape intervals
/// (Grafana's floor), `$__interval` the panel's minimum interval or one
/// scrape interval, `$__range` the time since Prometheus started. Each
/// variable's own query (`label_values`) must list the scenario's values.
///
/// Each panel query must be accepted and return at least one sample that
/// is a number (not NaN): no panel is empty in this scenario.
///
/// An alerting rule's condition does not hold here (no spoofing, the agent
/// is up), so stripping its comparison would prove little; instead each
/// rule must be accepted by Prometheus, and each selector in it, as in
/// every panel query, must find its metric exported with every label it
/// matches on: a misspelt metric or label fails, a value the scenario does
/// not produce (`kind="arp_spoof"`) does not. `rules.rs` tests when the
/// rules fire.
#[test]
fn every_panel_and_alerting_rule_has_data_while_containers_talk_and_one_scans() {
    docker_ready();
    prometheus_installed();
    let net = DockerNetwork::create("dash", &[]).expect("network");
    let (client, web, db) = (net.run("client"), net.run("web"), net.run("db"));
    let agent = Agent::start(&[]);
    agent.wait_attached(&[&client.name, &web.name, &db.name]);
    let scrape = Scrape::new(agent.addr);
    let prometheus = Prometheus::start(&scrape);
    let started = Instant::now();
    prometheus.wait_for_target_up();

    let (web_ip, db_ip) = (
        web.ip(&net.name).expect("ip"),
        db.ip(&net.name).expect("ip"),
    );
    // Pings throughout, so that rates are of live traffic when asked; the
    // container's removal ends them.
    let ping = [
        "exec",
        "-d",
        &client.name,
        "ping",
        "-q",
        "-c",
        "120",
        &web_ip,
    ];
    docker(&ping).expect("ping");
    let http = b"GET / HTTP/1.1\r\nHost: web\r\n\r\n";
    client.tcp_sessions(&web, &web_ip, 8080, 3, http);
    web.tcp_sessions(&db, &db_ip, 5432, 2, b"");
    web.connect_refused(&db_ip, 20_000..20_030);
    agent.wait_for_alert("port_scan", |alert| {
        alert["source"]["name"] == web.name.as_str()
    });
    let alerted = format!(
        r#"crossmon_alerts_total{{kind="port_scan",source="{}"}}"#,
        web.name
    );
    wait_until("the scan alert in Prometheus", || {
        !prometheus.query(&alerted).is_empty()
    });

    let scenario = Scenario {
        instance: agent.addr.to_string(),
        network: net.name.clone(),
        containers: [web.name.clone(), client.name.clone(), db.name.clone()],
        scrape: scrape.interval,
        range: format!("{}s", started.elapsed().as_secs() + 1),
    };
    let mut problems = Vec::new();
    let mut checks = rule_checks();
    for dashboard in Dashboard::all() {
        problems.extend(listing_problems(&prometheus, &dashboard, &scenario));
        checks.extend(panel_checks(&dashboard, &scenario));
    }
    let (presence, refused) = presence_checks(&checks);
    problems.extend(refused);
    checks.extend(presence);
    problems.extend(unanswered(&prometheus, checks, scrape.interval));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
