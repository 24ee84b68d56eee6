//! The operator's kit in `grafana/`: the Prometheus rule file passes `promtool check rules` and its unit tests
//! (`promtool test rules`: every alert fires on the series it is meant for and stays quiet on a brief spike),
//! every alert has a `for:`, a severity and a runbook that exists, and the Grafana dashboards are JSON that
//! Grafana loads, with both template variables, every query filtered by instance and parsing as PromQL.
//!
//! promtool comes from the Debian package `prometheus`; `scripts/test.sh` installs it when it is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use common::{dashboard_queries, panels};
use serde_json::Value;

/// Runbook links are relative to the repository root (no host is invented); see runbooks/README.md.
const RUNBOOK_BASE: &str = "runbooks/";
const DASHBOARDS: &[&str] = &["storyline-overview.json", "storyline-slo.json"];
const INSTANCE_FILTER: &str = r#"instance=~"$instance""#;
/// A panel may leave out the instance filter only when its description says why (the probe is its own target).
const NO_INSTANCE_FILTER: &str = "(no instance filter:";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn grafana() -> PathBuf {
    repo().join("grafana")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs promtool with `args` in `dir`; fails the test with install instructions when it is not on PATH.
fn promtool(dir: &Path, args: &[&str]) -> String {
    let out = match Command::new("promtool").args(args).current_dir(dir).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not on PATH. It comes with Prometheus: on Debian/Ubuntu `apt-get install -y prometheus` \
             (./scripts/test.sh installs it when missing); elsewhere download Prometheus from \
             https://prometheus.io/download/ and put its promtool on PATH."
        ),
        Err(e) => panic!("running promtool: {e}"),
    };
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {} failed:\n{text}", args.join(" "));
    text
}

/// `StorylineSloBurnRateFast` -> `storyline-slo-burn-rate-fast`.
fn kebab(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// One alert rule of the rule file, as the lines of its list item.
struct Alert {
    name: String,
    lines: Vec<String>,
}

impl Alert {
    fn field(&self, key: &str) -> Option<String> {
        let prefix = format!("{key}:");
        self.lines
            .iter()
            .map(|l| l.trim())
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim().trim_matches('"').to_owned())
    }
}

/// The alerts of the rule file. The file is YAML written in one regular layout (list items `- alert:` and
/// `- record:` under `rules:`), which is all this reads; promtool checks the YAML itself.
fn alerts() -> Vec<Alert> {
    let text = read(&grafana().join("prometheus/storyline-rules.yml"));
    let mut alerts: Vec<Alert> = Vec::new();
    let mut current: Option<(usize, Alert)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.starts_with("- ") || (!trimmed.is_empty() && !trimmed.starts_with('#') && indent == 0) {
            let ends_item = current.as_ref().is_some_and(|(item_indent, _)| indent <= *item_indent);
            if ends_item {
                alerts.extend(current.take().map(|(_, alert)| alert));
            }
        }
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            current = Some((indent, Alert { name: name.trim().to_owned(), lines: Vec::new() }));
        } else if let Some((_, alert)) = current.as_mut() {
            alert.lines.push(line.to_owned());
        }
    }
    alerts.extend(current.map(|(_, alert)| alert));
    alerts
}

#[test]
fn promtool_check_rules_accepts_the_rule_file() {
    let out = promtool(&grafana().join("prometheus"), &["check", "rules", "storyline-rules.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// The promtool unit test files, each run by its own test so that they run in parallel: the alerts that move
/// within minutes (evaluated every 15 s) and those that need hours or a day of history (every minute).
const RULE_TEST_FILES: &[&str] = &["storyline-rules.test.yml", "storyline-rules.long.test.yml"];

fn promtool_test_rules(file: &str) {
    let out = promtool(&grafana().join("prometheus"), &["test", "rules", file]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn promtool_unit_tests_of_the_fast_moving_alerts_pass() {
    promtool_test_rules(RULE_TEST_FILES[0]);
}

#[test]
fn promtool_unit_tests_of_the_alerts_that_need_hours_of_history_pass() {
    promtool_test_rules(RULE_TEST_FILES[1]);
}

#[test]
fn every_alert_has_a_unit_test_where_it_fires_and_one_where_it_stays_quiet() {
    // Every test file in the directory is one of those run above.
    let mut found: Vec<String> = std::fs::read_dir(grafana().join("prometheus"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".test.yml"))
        .collect();
    found.sort();
    let mut listed: Vec<String> = RULE_TEST_FILES.iter().map(|f| (*f).to_owned()).collect();
    listed.sort();
    assert_eq!(found, listed, "every promtool test file in grafana/prometheus is run by this suite");

    // Every alert has a unit test in which it fires (an expected alert with labels) and one in which it is
    // expected quiet, in one of the files.
    let tests: String = RULE_TEST_FILES.iter().map(|f| read(&grafana().join("prometheus").join(f))).collect();
    for alert in alerts() {
        let checked = format!("alertname: {}\n", alert.name);
        let fires = format!("alertname: {}\n        exp_alerts:\n          - exp_labels:", alert.name);
        let quiet = format!("alertname: {}\n        exp_alerts: []", alert.name);
        assert!(tests.contains(&checked), "{} has no promtool unit test", alert.name);
        assert!(tests.contains(&fires), "no promtool unit test shows {} firing", alert.name);
        assert!(tests.contains(&quiet), "no promtool unit test shows {} staying quiet", alert.name);
    }
}

#[test]
fn every_alert_has_a_for_a_severity_a_summary_and_a_runbook_that_exists() {
    let alerts = alerts();
    assert!(alerts.len() >= 12, "expected the issue's alerts, found {}", alerts.len());
    let mut runbooks = BTreeSet::new();
    for alert in &alerts {
        let name = &alert.name;
        let for_ = alert.field("for").unwrap_or_else(|| panic!("{name} has no `for:` (it would flap)"));
        assert!(!for_.starts_with('0'), "{name} has `for: {for_}`: a brief spike would fire it");
        let severity = alert.field("severity").unwrap_or_else(|| panic!("{name} has no severity label"));
        assert!(["page", "ticket"].contains(&severity.as_str()), "{name}: severity {severity} is not page or ticket");
        for key in ["summary", "description"] {
            assert!(alert.field(key).is_some_and(|v| !v.is_empty()), "{name} has no {key} annotation");
        }
        let runbook = alert.field("runbook_url").unwrap_or_else(|| panic!("{name} has no runbook_url"));
        let file = format!("{}.md", kebab(name));
        assert_eq!(runbook, format!("{RUNBOOK_BASE}{file}"), "{name}: runbook_url");
        let path = repo().join("runbooks").join(&file);
        let text = read(&path);
        assert!(text.contains(name.as_str()), "{} does not name the alert {name}", path.display());
        runbooks.insert(file);
    }
    // No runbook for an alert that no longer exists.
    for entry in std::fs::read_dir(repo().join("runbooks")).unwrap() {
        let file = entry.unwrap().file_name().into_string().unwrap();
        if file.ends_with(".md") && file != "README.md" {
            assert!(runbooks.contains(&file), "runbooks/{file} belongs to no alert in storyline-rules.yml");
        }
    }
}

fn dashboard(file: &str) -> Value {
    let path = grafana().join("dashboards").join(file);
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

#[test]
fn dashboards_are_grafana_json_with_both_variables_and_every_query_filtered_by_instance() {
    let mut uids = BTreeSet::new();
    for file in DASHBOARDS {
        let d = dashboard(file);
        let uid = d["uid"].as_str().unwrap_or_else(|| panic!("{file}: no uid"));
        assert!(uids.insert(uid.to_owned()), "{file}: uid {uid} is used twice");
        assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "{file}: no title");
        assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "{file}: schemaVersion for Grafana 10/11");

        let variables = d["templating"]["list"].as_array().unwrap_or_else(|| panic!("{file}: no templating.list"));
        let variable = |name: &str| {
            variables
                .iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("{file}: no `{name}` template variable"))
        };
        let datasource = variable("datasource");
        assert_eq!(datasource["type"], "datasource", "{file}: `datasource` is a datasource variable");
        assert_eq!(datasource["query"], "prometheus", "{file}: `datasource` picks Prometheus datasources");
        let instance = variable("instance");
        assert_eq!(instance["query"], "label_values(storyline_build_info, instance)", "{file}: instance query");
        assert_eq!(instance["multi"], true, "{file}: instance is multi-value");
        assert_eq!(instance["includeAll"], true, "{file}: instance includes All");

        let panels = panels(&d);
        assert!(!panels.is_empty(), "{file}: no panels");
        let mut ids = BTreeSet::new();
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or_else(|| panic!("{file}: a panel without a title"));
            let at = format!("{file}: panel {title:?}");
            assert!(ids.insert(panel["id"].as_u64().unwrap_or_else(|| panic!("{at}: no id"))), "{at}: duplicate id");
            for key in ["h", "w", "x", "y"] {
                assert!(panel["gridPos"][key].is_u64(), "{at}: gridPos.{key}");
            }
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "{at}: datasource");
            let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("{at}: no targets"));
            assert!(!targets.is_empty(), "{at}: no targets (no decorative panels)");
            let mut ref_ids = BTreeSet::new();
            for target in targets {
                let expr = target["expr"].as_str().unwrap_or_else(|| panic!("{at}: a target without expr"));
                assert!(!expr.trim().is_empty(), "{at}: empty expr");
                let ref_id = target["refId"].as_str().unwrap_or_else(|| panic!("{at}: a target without refId"));
                assert!(ref_ids.insert(ref_id.to_owned()), "{at}: refId {ref_id} twice");
                assert_eq!(target["datasource"]["uid"], "${datasource}", "{at}: target datasource");
                let justified = panel["description"].as_str().is_some_and(|d| d.contains(NO_INSTANCE_FILTER));
                assert!(
                    justified || selectors_filtered_by_instance(expr),
                    "{at}: every metric selector in {expr:?} must carry {INSTANCE_FILTER}"
                );
            }
        }
    }
}

/// Whether every `{...}` label matcher list in a PromQL expression carries the instance filter, and every metric
/// name is followed by one (a bare `name[5m]` or `name)` would read every instance).
fn selectors_filtered_by_instance(expr: &str) -> bool {
    let braces = expr.matches('{').count();
    let filtered = expr.matches(INSTANCE_FILTER).count();
    let bare = ["_total[", "_bucket[", "_count[", "_total)", "_bytes)", "_fds)", "_info)"]
        .iter()
        .any(|pattern| expr.contains(pattern));
    braces > 0 && braces == filtered && !bare
}

#[test]
fn every_dashboard_expression_parses_as_promql() {
    // promtool parses expressions through a rule file: one recording rule per panel query, with Grafana's
    // variables replaced by values they can take.
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    let mut count = 0;
    for query in dashboard_queries() {
        count += 1;
        rules.push_str(&format!(
            "      - record: dashboard:expr_{count}\n        expr: {}\n",
            serde_json::to_string(&query.promql).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboards.yml"), rules).unwrap();
    let out = promtool(dir.path(), &["check", "rules", "dashboards.yml"]);
    assert!(out.contains(&format!("SUCCESS: {count} rules found")), "{out}");
}

#[test]
fn provisioning_loads_the_dashboards_directory_and_a_prometheus_datasource() {
    let provider = read(&grafana().join("provisioning/dashboards/storyline.yml"));
    assert!(provider.contains("type: file"), "the dashboard provider is a file provider");
    assert!(provider.contains("path: "), "the dashboard provider names a path");
    let datasource = read(&grafana().join("provisioning/datasources/prometheus.yml"));
    assert!(datasource.contains("type: prometheus"), "the provisioned datasource is Prometheus");
    for file in DASHBOARDS {
        assert!(grafana().join("dashboards").join(file).is_file(), "grafana/dashboards/{file}");
    }
}
