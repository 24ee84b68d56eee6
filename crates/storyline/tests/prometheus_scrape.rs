//! End to end with a real Prometheus (the binary from the Debian package `prometheus`): it scrapes `storyline
//! serve` (memory broker) and a repeating `storyline probe` every second while a small load runs, evaluates
//! `grafana/prometheus/storyline-rules.yml` every second, and then answers every expression of the dashboards
//! (`grafana/dashboards/*.json`, each panel target) and of the rule file (each recording rule and alert).
//!
//! Every expression must parse, every rule must evaluate without error, and every expression must return data,
//! where "returns data" means:
//! - a dashboard target or a recording rule: at least one sample, once Grafana's variables are replaced by values
//!   they can take (`$instance` by `.*`, `$__rate_interval` and `$__interval` by `1m`, `$__range` by the
//!   dashboard's default time range). A NaN sample (say 0/0) is data: the panel draws, and reads "no traffic".
//! - an alert: its expression is a condition, and under a healthy load it is empty; that is the point, not a gap.
//!   What must not be empty is what it compares. The condition is split at its `and`/`or`/`unless` and both
//!   sides of every comparison (numbers aside) are evaluated: the alert returns data when every quantity it
//!   compares has a sample, so it would fire if that quantity crossed its threshold rather than being unable
//!   to. `offset` is removed from these operands: a Prometheus a minute old has nothing an hour ago, and without
//!   the offset the operand reads the same series through the same labels and matching. The whole condition is
//!   still evaluated (it must parse), and whether it holds right now is printed.
//!
//! No expression may be empty. When one is, the failure names the series it reads that have no samples (following
//! recording rules to their inputs): a metric the service does not export, or a series that only appears after a
//! fault (register such counters at 0 at start). The test prints a table of every expression and what it
//! returned (see it with `cargo test -p storyline --test prometheus_scrape -- --nocapture`).
//!
//! Nothing here uses a fixed port: the service and the probe bind port 0 and log their address; Prometheus gets a
//! port found free (and another if it loses the race for it). Every wait is a poll with a deadline, and every
//! child process is killed when the test ends, passing or not.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The table printed at the end is the test's report.
#![allow(clippy::print_stdout)]

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use serde_json::Value;

use common::{Running, dashboard_queries, logged_base_url, mint_token, spawn};

const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// The stories the load writes and reads: two namespaces, so per-namespace series are more than one.
const STORIES: &[&str] = &["public:tale", "guild:saga"];

/// A well-formed token with a wrong signature (base64 of "forged-signature-marker"): a 401.
const FORGED: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.Zm9yZ2VkLXNpZ25hdHVyZS1tYXJrZXI";

/// How long the load may run before every expression must have returned data. On a quiet machine it takes
/// 10 to 20 s: two scrapes for rate() to have two samples, and the first evaluation of the probe's rule group
/// (`interval: 15s`).
const DATA_DEADLINE: Duration = Duration::from_secs(40);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scraping_the_service_under_load_gets_data_for_every_dashboard_and_rule_expression() {
    let started = Instant::now();
    // Arrange: the service, a probe against it, a load on it, and Prometheus scraping the service and the probe.
    let (_serve, _serve_logs, base) = serve();
    let (_probe, _probe_logs, probe_base) = probe(&base);
    let (stop_load, load) = tokio::sync::oneshot::channel();
    let load = tokio::spawn(run_load(base.clone(), load));
    let dir = tempfile::tempdir().unwrap();
    let prometheus = Prometheus::start(dir.path(), &[("storyline", &base), ("storyline-probe", &probe_base)]).await;
    prometheus.wait_until_up(&["storyline", "storyline-probe"]).await;
    let rules = prometheus.rules().await;
    let expressions = [dashboard_expressions(), rule_expressions(&rules)].concat();
    let records: BTreeMap<String, String> =
        rules.iter().filter(|r| r.kind == RuleKind::Recording).map(|r| (r.name.clone(), r.query.clone())).collect();

    // Act: evaluate everything once a second until each expression has data, every
    // rule has been evaluated, or the deadline passes.
    let until = Instant::now() + DATA_DEADLINE;
    let (rows, rules) = loop {
        let rules = prometheus.rules().await;
        let rows = prometheus.evaluate(&expressions, &records).await;
        let settled = rows.iter().all(|row| matches!(row.outcome, Outcome::Data(_)))
            && rules.iter().all(|rule| rule.health == "ok" || rule.health == "err");
        let invalid = rows.iter().any(|row| matches!(row.outcome, Outcome::Invalid(_)));
        if settled || invalid || Instant::now() >= until {
            break (rows, rules);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let _ = stop_load.send(());
    let load = load.await.unwrap();
    println!("{}", report(&rows, &rules, &load, started.elapsed()));

    // Assert
    assert!(load.unexpected.is_empty(), "the load got answers it did not expect: {:#?}", load.unexpected);
    assert!(load.published > 0 && load.rejected > 0 && load.resumed > 0, "the load ran: {load:?}");
    for (reader, events) in &load.delivered {
        assert!(*events > 0, "the reader {reader} received the events published to its story");
    }
    assert_eq!(
        rules.len(),
        rule_count_in_file(),
        "Prometheus loaded every rule of storyline-rules.yml (count of `- record:` and `- alert:` items)"
    );
    let invalid: Vec<String> = rows
        .iter()
        .filter_map(|row| match &row.outcome {
            Outcome::Invalid(error) => Some(format!("{}: {error}\n    {}", row.expression.name, row.expression.promql)),
            _ => None,
        })
        .collect();
    assert!(invalid.is_empty(), "expressions Prometheus rejects:\n{}", invalid.join("\n"));
    let unhealthy: Vec<String> = rules
        .iter()
        .filter(|rule| rule.health != "ok")
        .map(|rule| format!("{} {}: health {} {}", rule.kind.as_str(), rule.name, rule.health, rule.last_error))
        .collect();
    assert!(unhealthy.is_empty(), "rules that failed or were never evaluated:\n{}", unhealthy.join("\n"));
    let empty: Vec<String> = rows
        .iter()
        .filter(|row| !matches!(row.outcome, Outcome::Data(_)))
        .map(|row| format!("{}: {}\n    {}", row.expression.name, row.outcome.describe(), row.expression.promql))
        .collect();
    assert!(empty.is_empty(), "expressions without data:\n{}", empty.join("\n"));
}

// ------------------------------------------------------------------------------------------------------------
// The processes

/// `storyline serve` on a free port (memory broker, the test secret): the process, its log lines, its base URL.
fn serve() -> (Running, std::sync::mpsc::Receiver<String>, String) {
    let (serve, logs) = spawn(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("STORYLINE_JWT_SECRET", SECRET), ("STORYLINE_LOG_FORMAT", "text")],
    );
    let base = logged_base_url(&logs);
    (serve, logs, base)
}

/// `storyline probe` against `base`, every second, with its own `/metrics` on a free port: the probe's series
/// (`storyline_probe_*`) are what the probe panels and the probe alert read.
fn probe(base: &str) -> (Running, std::sync::mpsc::Receiver<String>, String) {
    let token = mint_token(SECRET, &["--sub", "probe", "--scope", "read:probe:* write:probe:*"]);
    let (probe, logs) = spawn(
        &["probe", "--url", base, "--interval-secs", "1", "--timeout-secs", "2", "--listen", "127.0.0.1:0"],
        &[("STORYLINE_PROBE_TOKEN", &token), ("RUST_LOG", "info")],
    );
    let metrics = logged_base_url(&logs);
    (probe, logs, metrics)
}

/// A Prometheus server of our own: its data in a temporary directory, its web API on a free port.
struct Prometheus {
    _process: Running,
    base: String,
    client: reqwest::Client,
}

impl Prometheus {
    /// Starts Prometheus scraping each `(job, base URL)` every second and evaluating the rule file every second.
    /// Fails the test with install instructions when `prometheus` is not on PATH.
    async fn start(dir: &Path, jobs: &[(&str, &str)]) -> Self {
        let rules = repo().join("grafana/prometheus/storyline-rules.yml").canonicalize().unwrap();
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\nscrape_configs:\n",
            serde_json::to_string(&rules).unwrap()
        );
        for (job, base) in jobs {
            let target = base.strip_prefix("http://").unwrap();
            writeln!(config, "  - job_name: {job}\n    static_configs:\n      - targets: [\"{target}\"]").unwrap();
        }
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let client = storyline_testkit::http_client_builder().timeout(Duration::from_secs(10)).build().unwrap();
        let (process, base) = common::start_prometheus(Path::new("prometheus"), &config_file, dir).await;
        Self { _process: process, base, client }
    }

    /// Waits until the last scrape of every job succeeded (`up` is 1).
    async fn wait_until_up(&self, jobs: &[&str]) {
        storyline_testkit::poll_until("Prometheus scrapes every target (up == 1)", Duration::from_secs(20), || async {
            let samples = self.query("up == 1").await.ok()?;
            let up: BTreeSet<&str> = samples.iter().filter_map(|s| s["metric"]["job"].as_str()).collect();
            jobs.iter().all(|job| up.contains(job)).then_some(())
        })
        .await;
    }

    /// An instant query at the current time: the result's samples, or Prometheus' error.
    async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let mut url = reqwest::Url::parse(&format!("{}/api/v1/query", self.base)).unwrap();
        url.query_pairs_mut().append_pair("query", promql);
        let response = self.client.get(url).send().await.map_err(|e| format!("request failed: {e}"))?;
        let body: Value = response.json().await.map_err(|e| format!("not JSON: {e}"))?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]).replace('"', ""));
        }
        Ok(match body["data"]["resultType"].as_str() {
            Some("vector" | "matrix") => body["data"]["result"].as_array().cloned().unwrap_or_default(),
            // A scalar or a string is one value.
            _ => vec![serde_json::json!({"metric": {}, "value": body["data"]["result"]})],
        })
    }

    async fn has_series(&self, selector: &str) -> bool {
        self.query(selector).await.is_ok_and(|samples| !samples.is_empty())
    }

    /// Every rule Prometheus loaded, as it evaluates it.
    async fn rules(&self) -> Vec<Rule> {
        let body: Value =
            self.client.get(format!("{}/api/v1/rules", self.base)).send().await.unwrap().json().await.unwrap();
        assert_eq!(body["status"], "success", "{body}");
        let mut rules = Vec::new();
        for group in body["data"]["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                let text = |key: &str| rule[key].as_str().unwrap_or_default().to_owned();
                rules.push(Rule {
                    kind: if rule["type"] == "alerting" { RuleKind::Alerting } else { RuleKind::Recording },
                    name: text("name"),
                    query: text("query"),
                    health: text("health"),
                    last_error: text("lastError"),
                });
            }
        }
        rules
    }

    /// Evaluates every expression; an empty one is traced to the series it reads that have no samples.
    async fn evaluate(&self, expressions: &[Expression], records: &BTreeMap<String, String>) -> Vec<Row> {
        let mut presence = BTreeMap::new();
        let mut rows = Vec::new();
        for expression in expressions {
            let outcome = self.evaluate_one(expression, records, &mut presence).await;
            rows.push(Row { expression: expression.clone(), outcome });
        }
        rows
    }

    async fn evaluate_one(
        &self,
        expression: &Expression,
        records: &BTreeMap<String, String>,
        presence: &mut BTreeMap<String, bool>,
    ) -> Outcome {
        let whole = match self.query(&expression.promql).await {
            Ok(samples) => samples,
            Err(error) => return Outcome::Invalid(error),
        };
        let mut empty = Vec::new();
        let detail = if expression.kind == Kind::Alert {
            for operand in &expression.operands {
                match self.query(operand).await {
                    Err(error) => return Outcome::Invalid(format!("operand {operand}: {error}")),
                    Ok(samples) if samples.is_empty() => empty.push(operand),
                    Ok(_) => {}
                }
            }
            let holds = if whole.is_empty() { "does not hold" } else { "HOLDS now" };
            let n = expression.operands.len();
            format!("{n} operand{} with data; the condition {holds}", if n == 1 { "" } else { "s, each" })
        } else {
            if whole.is_empty() {
                empty.push(&expression.promql);
            }
            format!("{} series, e.g. {}", whole.len(), sample_value(whole.first()))
        };
        if empty.is_empty() {
            return Outcome::Data(detail);
        }
        let mut missing = BTreeSet::new();
        for promql in empty {
            self.missing_series(promql, records, presence, &mut missing).await;
        }
        Outcome::Empty { missing: missing.into_iter().collect() }
    }

    /// Adds to `missing` the selectors read by `promql` that have no series, following recording rules (an
    /// empty recorded series is explained by the selectors of its rule, or is itself the reason when they all
    /// have data). `presence` caches the lookups of one round.
    async fn missing_series(
        &self,
        promql: &str,
        records: &BTreeMap<String, String>,
        presence: &mut BTreeMap<String, bool>,
        missing: &mut BTreeSet<String>,
    ) {
        let mut todo = selectors(promql);
        let mut seen = BTreeSet::new();
        while let Some(selector) = todo.pop() {
            if !seen.insert(selector.clone()) {
                continue;
            }
            let present = match presence.get(&selector) {
                Some(present) => *present,
                None => {
                    let present = self.has_series(&selector).await;
                    presence.insert(selector.clone(), present);
                    present
                }
            };
            if present {
                continue;
            }
            match records.get(metric_name(&selector)) {
                // A recorded series: explained by the rule's own inputs when one of them is missing, else it is
                // the reason itself (the rule has not been evaluated yet, or returns nothing from what it reads).
                Some(rule) => {
                    let before = missing.len();
                    Box::pin(self.missing_series(rule, records, presence, missing)).await;
                    if missing.len() == before {
                        missing.insert(selector);
                    }
                }
                None => {
                    missing.insert(selector);
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------------------
// The load

/// What the load did.
#[derive(Debug, Default)]
struct Load {
    /// Events accepted (201).
    published: usize,
    /// Requests refused as intended (401 without a token or with a forged one, 404 on an unknown route).
    rejected: usize,
    /// Streams resumed with `Last-Event-ID` that received the next event.
    resumed: usize,
    /// Events each long-lived reader received, by `story/tier`.
    delivered: BTreeMap<String, usize>,
    /// Answers that were not what the request should get.
    unexpected: Vec<String>,
}

/// Writes to and reads from [`STORIES`] until `stop` (or [`DATA_DEADLINE`] has passed, so that the load is
/// bounded whatever happens): four streams open throughout (two per story, a member and an agent), four POSTs a
/// second per story, two event types; now and then a resume with `Last-Event-ID` and requests that are refused
/// (401 without a token and with a forged one, on both routes; 404).
async fn run_load(base: String, mut stop: tokio::sync::oneshot::Receiver<()>) -> Load {
    let writer = mint_token(SECRET, &["--sub", "writer", "--scope", "write:*", "--tier", "agent"]);
    let readers = [
        ("member", mint_token(SECRET, &["--sub", "reader-member", "--scope", "read:*", "--tier", "member"])),
        ("agent", mint_token(SECRET, &["--sub", "reader-agent", "--scope", "read:*", "--tier", "agent"])),
    ];
    let client = storyline_testkit::http_client_builder().timeout(Duration::from_secs(5)).build().unwrap();
    let stream_client = storyline_testkit::http_client();
    let mut load = Load::default();
    let stream_url = |story: &str| format!("{base}/v1/stories/{story}/stream");
    let events_url = |story: &str| format!("{base}/v1/stories/{story}/events");

    let mut streams = Vec::new();
    for story in STORIES {
        for (tier, token) in &readers {
            let response = stream_client.get(stream_url(story)).bearer_auth(token).send().await.unwrap();
            if response.status() != 200 {
                load.unexpected.push(format!("stream {story} as {tier}: {}", response.status()));
                continue;
            }
            let events = Arc::new(AtomicUsize::new(0));
            let counter = events.clone();
            let task = tokio::spawn(async move {
                let mut body = response.bytes_stream();
                let mut buffer = bytes::BytesMut::new();
                while let Some(Ok(chunk)) = body.next().await {
                    buffer.extend_from_slice(&chunk);
                    while let Some(frame) = storyline_hub::take_frame(&mut buffer) {
                        if frame.data.is_some() {
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
            streams.push((format!("{story}/{tier}"), events, task));
        }
    }

    let until = tokio::time::Instant::now() + DATA_DEADLINE;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_ids: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for n in 0usize.. {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep_until(until) => break,
            _ = tick.tick() => {}
        }
        for story in STORIES {
            let event_type = if n % 3 == 0 { "comment" } else { "chapter" };
            let body = serde_json::json!({"type": event_type, "data": {"n": n}});
            let response = client.post(events_url(story)).bearer_auth(&writer).json(&body).send().await.unwrap();
            if response.status() == 201 {
                load.published += 1;
                let receipt: Value = response.json().await.unwrap();
                last_ids.entry(story).or_default().push(receipt["id"].as_str().unwrap().to_owned());
            } else {
                load.unexpected.push(format!("POST {story}: {}", response.status()));
            }
        }
        if n % 4 == 1 {
            let story = STORIES[n / 4 % STORIES.len()];
            let body = serde_json::json!({"type": "chapter", "data": {"n": n}});
            for (what, request, expected) in [
                ("POST without a token", client.post(events_url(story)).json(&body), 401),
                ("POST with a forged token", client.post(events_url(story)).bearer_auth(FORGED).json(&body), 401),
                ("stream without a token", client.get(stream_url(story)), 401),
                ("stream with a forged token", client.get(stream_url(story)).bearer_auth(FORGED), 401),
                ("an unknown route", client.get(format!("{base}/v1/nowhere")), 404),
            ] {
                let status = request.send().await.unwrap().status();
                if status == expected {
                    load.rejected += 1;
                } else {
                    load.unexpected.push(format!("{what}: {status}, expected {expected}"));
                }
            }
        }
        if n % 8 == 5 {
            // Resume from the second-to-last event: the last one comes straight back, then the stream is dropped
            // (a close by the client).
            let story = STORIES[n / 8 % STORIES.len()];
            let Some([resume_from, next]) = last_ids.get(story).and_then(|ids| ids.last_chunk::<2>()) else {
                continue;
            };
            let response = stream_client
                .get(stream_url(story))
                .bearer_auth(&readers[0].1)
                .header("last-event-id", resume_from)
                .send()
                .await
                .unwrap();
            let mut body = response.bytes_stream();
            let mut buffer = bytes::BytesMut::new();
            let first = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(Ok(chunk)) = body.next().await {
                    buffer.extend_from_slice(&chunk);
                    while let Some(frame) = storyline_hub::take_frame(&mut buffer) {
                        if frame.data.is_some() {
                            return frame.id;
                        }
                    }
                }
                None
            })
            .await;
            match first {
                Ok(Some(id)) if &id == next => load.resumed += 1,
                other => load.unexpected.push(format!("resume {story} after {resume_from}: {other:?}, not {next}")),
            }
        }
    }
    for (reader, events, task) in streams {
        task.abort();
        load.delivered.insert(reader, events.load(Ordering::Relaxed));
    }
    load
}

// ------------------------------------------------------------------------------------------------------------
// The expressions

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dashboard,
    Record,
    Alert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RuleKind {
    Recording,
    Alerting,
}

impl RuleKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Recording => "record",
            Self::Alerting => "alert",
        }
    }
}

impl From<RuleKind> for Kind {
    fn from(kind: RuleKind) -> Self {
        match kind {
            RuleKind::Recording => Self::Record,
            RuleKind::Alerting => Self::Alert,
        }
    }
}

/// A rule as Prometheus loaded it (`/api/v1/rules`).
#[derive(Debug)]
struct Rule {
    kind: RuleKind,
    name: String,
    /// The expression, as Prometheus prints it.
    query: String,
    /// `ok`, `err`, or `unknown` (not evaluated yet).
    health: String,
    last_error: String,
}

/// One expression to evaluate.
#[derive(Debug, Clone)]
struct Expression {
    kind: Kind,
    /// Where it comes from, for the table.
    name: String,
    /// As Prometheus evaluates it (Grafana's variables replaced).
    promql: String,
    /// An alert's operands, which must return data (see the module docs); the other expressions must themselves.
    operands: Vec<String>,
}

/// Every panel target of every dashboard, with Grafana's variables replaced by values they can take.
fn dashboard_expressions() -> Vec<Expression> {
    dashboard_queries()
        .into_iter()
        .map(|query| Expression { kind: Kind::Dashboard, name: query.name, promql: query.promql, operands: Vec::new() })
        .collect()
}

/// Every recording rule (checked as it is), then every alert (checked by its operands).
fn rule_expressions(rules: &[Rule]) -> Vec<Expression> {
    let (records, alerts): (Vec<&Rule>, Vec<&Rule>) = rules.iter().partition(|r| r.kind == RuleKind::Recording);
    records
        .into_iter()
        .chain(alerts)
        .map(|rule| {
            let operands = match rule.kind {
                RuleKind::Recording => Vec::new(),
                RuleKind::Alerting => condition_operands(&rule.query),
            };
            assert!(
                rule.kind == RuleKind::Recording || !operands.is_empty(),
                "alert {}: no operand found in {:?}",
                rule.name,
                rule.query
            );
            Expression {
                kind: rule.kind.into(),
                name: format!("{} {}", rule.kind.as_str(), rule.name),
                promql: rule.query.clone(),
                operands,
            }
        })
        .collect()
}

/// The `- record:` and `- alert:` items of the rule file.
fn rule_count_in_file() -> usize {
    let text = std::fs::read_to_string(repo().join("grafana/prometheus/storyline-rules.yml")).unwrap();
    text.lines()
        .map(str::trim_start)
        .filter(|line| line.starts_with("- record:") || line.starts_with("- alert:"))
        .count()
}

/// What an alert's condition compares: split at `and`/`or`/`unless`, both sides of each comparison, numbers
/// left out and `offset`s removed; a part that compares nothing is itself an operand.
fn condition_operands(condition: &str) -> Vec<String> {
    let condition = strip_outer_parens(condition);
    let parts = split_set_operators(condition);
    let mut operands: Vec<String> = if parts.len() > 1 {
        parts.into_iter().flat_map(condition_operands).collect()
    } else {
        match split_comparison(condition) {
            Some((left, right)) => {
                [left, right].into_iter().filter(|side| !is_number(side)).map(without_offsets).collect()
            }
            None => vec![without_offsets(condition)],
        }
    };
    let mut seen = BTreeSet::new();
    operands.retain(|operand| seen.insert(operand.clone()));
    operands
}

fn is_ident(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b':'
}

/// The bytes of `expr` from `start` on that lie outside string literals, with their indices.
fn unquoted(expr: &str, start: usize) -> impl Iterator<Item = (usize, u8)> + '_ {
    let (mut quote, mut escaped) = (None, false);
    expr.bytes().enumerate().skip(start).filter(move |&(_, byte)| {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == q {
                quote = None;
            }
            return false;
        }
        if matches!(byte, b'"' | b'\'' | b'`') {
            quote = Some(byte);
            return false;
        }
        true
    })
}

/// For each byte of `expr`: whether it lies outside every (), {}, [] and string literal.
fn top_level(expr: &str) -> Vec<bool> {
    let mut out = vec![false; expr.len()];
    let mut depth = 0usize;
    for (i, byte) in unquoted(expr, 0) {
        match byte {
            b'(' | b'{' | b'[' => depth += 1,
            b')' | b'}' | b']' => depth = depth.saturating_sub(1),
            _ => out[i] = depth == 0,
        }
    }
    out
}

/// The index of the bracket closing the one at `open`.
fn closing(expr: &str, open: usize) -> usize {
    let mut depth = 0usize;
    for (i, byte) in unquoted(expr, open) {
        match byte {
            b'(' | b'{' | b'[' => depth += 1,
            b')' | b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced brackets in {expr:?}")
}

/// `expr` without parentheses that enclose all of it.
fn strip_outer_parens(mut expr: &str) -> &str {
    loop {
        expr = expr.trim();
        if expr.starts_with('(') && closing(expr, 0) == expr.len() - 1 {
            expr = &expr[1..expr.len() - 1];
        } else {
            return expr;
        }
    }
}

/// `expr` split at its top-level set operators (`and`, `or`, `unless`, with their `on (...)`/`ignoring (...)`).
fn split_set_operators(expr: &str) -> Vec<&str> {
    let (top, bytes) = (top_level(expr), expr.as_bytes());
    let mut parts = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        let at_word = top[i] && (i == 0 || !is_ident(bytes[i - 1]));
        let operator = ["and", "or", "unless"]
            .into_iter()
            .find(|op| at_word && expr[i..].starts_with(op) && !bytes.get(i + op.len()).is_some_and(|b| is_ident(*b)));
        let Some(operator) = operator else {
            i += 1;
            continue;
        };
        parts.push(&expr[start..i]);
        i += operator.len();
        let rest = expr[i..].trim_start();
        for modifier in ["on", "ignoring"] {
            if let Some(labels) = rest.strip_prefix(modifier).map(str::trim_start).filter(|r| r.starts_with('(')) {
                let open = expr.len() - labels.len();
                i = closing(expr, open) + 1;
            }
        }
        start = i;
    }
    parts.push(&expr[start..]);
    parts
}

/// The two sides of `expr`'s top-level comparison, if it has one (`bool` dropped).
fn split_comparison(expr: &str) -> Option<(&str, &str)> {
    let (top, bytes) = (top_level(expr), expr.as_bytes());
    (0..bytes.len()).find_map(|i| {
        if !top[i] {
            return None;
        }
        let len = match (bytes[i], bytes.get(i + 1)) {
            (b'=' | b'!' | b'>' | b'<', Some(b'=')) => 2,
            (b'>' | b'<', _) => 1,
            _ => return None,
        };
        let right = expr[i + len..].trim_start();
        let right = right.strip_prefix("bool ").unwrap_or(right);
        Some((expr[..i].trim(), right.trim()))
    })
}

/// A number or arithmetic on numbers (`100`, `(14.4 * 0.001)`): it always has a value.
fn is_number(expr: &str) -> bool {
    !expr.trim().is_empty() && expr.chars().all(|c| c.is_ascii_digit() || " .+-*/()".contains(c))
}

/// `expr` without its `offset <duration>` modifiers.
fn without_offsets(expr: &str) -> String {
    let mut out = expr.to_owned();
    while let Some(at) = out.find(" offset ") {
        let duration = &out[at + " offset ".len()..];
        let len = duration.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(duration.len());
        out.replace_range(at..at + " offset ".len() + len, "");
    }
    out
}

/// The vector selectors an expression reads (`name` or `name{matchers}`), as written.
fn selectors(expr: &str) -> Vec<String> {
    // Aggregations and operators that look like names; the grouping ones are followed by a label list.
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "offset",
        "bool",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "atan2",
        "inf",
        "nan",
    ];
    const GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
    let bytes = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if matches!(byte, b'"' | b'\'' | b'`') {
            let end = expr[i + 1..].find(char::from(byte)).unwrap();
            i += end + 2;
        } else if byte == b'[' {
            i = closing(expr, i) + 1;
        } else if byte.is_ascii_digit() || byte == b'.' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                i += 1;
            }
        } else if byte == b'{' {
            let close = closing(expr, i);
            out.push(expr[i..=close].to_owned());
            i = close + 1;
        } else if is_ident(byte) {
            let start = i;
            while i < bytes.len() && is_ident(bytes[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            let next = expr[i..].trim_start();
            let lower = word.to_ascii_lowercase();
            if GROUPING.contains(&lower.as_str()) && next.starts_with('(') {
                i = closing(expr, expr.len() - next.len()) + 1;
            } else if KEYWORDS.contains(&lower.as_str()) || next.starts_with('(') {
                // An aggregation, an operator or a function call: its arguments are read on.
            } else if next.starts_with('{') {
                let open = expr.len() - next.len();
                let close = closing(expr, open);
                out.push(format!("{word}{}", &expr[open..=close]));
                i = close + 1;
            } else {
                out.push(word.to_owned());
            }
        } else {
            i += 1;
        }
    }
    out.sort();
    out.dedup();
    out
}

fn metric_name(selector: &str) -> &str {
    selector.split('{').next().unwrap_or(selector)
}

fn sample_value(sample: Option<&Value>) -> String {
    sample.and_then(|s| s["value"][1].as_str()).unwrap_or("-").to_owned()
}

// ------------------------------------------------------------------------------------------------------------
// The outcome

#[derive(Debug)]
struct Row {
    expression: Expression,
    outcome: Outcome,
}

#[derive(Debug)]
enum Outcome {
    /// Prometheus refused the expression.
    Invalid(String),
    /// The expression returned samples (for an alert: each operand did): what it returned.
    Data(String),
    /// Nothing came back: the selectors it reads that have no series (none: every series exists, and
    /// the expression is empty all the same).
    Empty { missing: Vec<String> },
}

impl Outcome {
    fn describe(&self) -> String {
        match self {
            Self::Invalid(error) => format!("invalid: {error}"),
            Self::Data(detail) => detail.clone(),
            Self::Empty { missing } if missing.is_empty() => {
                "no data, though every series it reads exists (label matching? too few samples?)".to_owned()
            }
            Self::Empty { missing } => format!("no data: no series {}", missing.join(", ")),
        }
    }
}

/// The table: a count by outcome, then one line per expression.
fn report(rows: &[Row], rules: &[Rule], load: &Load, elapsed: Duration) -> String {
    let count = |f: &dyn Fn(&Row) -> bool| rows.iter().filter(|row| f(row)).count();
    let data = count(&|row| matches!(row.outcome, Outcome::Data(_)));
    let mut out = String::new();
    writeln!(
        out,
        "\nprometheus_scrape: {} expressions ({} dashboard targets, {} recording rules, {} alerts): {data} return \
         data, {} empty, {} invalid; {} rules healthy. Load: {} events published, {:?} delivered, \
         {} resumes, {} refused requests. {:.1} s.",
        rows.len(),
        count(&|row| row.expression.kind == Kind::Dashboard),
        count(&|row| row.expression.kind == Kind::Record),
        count(&|row| row.expression.kind == Kind::Alert),
        count(&|row| matches!(row.outcome, Outcome::Empty { .. })),
        count(&|row| matches!(row.outcome, Outcome::Invalid(_))),
        rules.iter().filter(|rule| rule.health == "ok").count(),
        load.published,
        load.delivered,
        load.resumed,
        load.rejected,
        elapsed.as_secs_f64(),
    )
    .unwrap();
    let width = rows.iter().map(|row| row.expression.name.len()).max().unwrap_or(0);
    for row in rows {
        let mark = match &row.outcome {
            Outcome::Data(_) => "data ",
            Outcome::Empty { .. } => "EMPTY",
            Outcome::Invalid(_) => "FAIL ",
        };
        writeln!(out, "  {mark}  {:<width$}  {}", row.expression.name, row.outcome.describe()).unwrap();
    }
    out
}

/// The test's own reading of alert conditions, on the shapes the rule file uses.
#[test]
fn alert_operands_are_both_sides_of_each_comparison_without_numbers_or_offsets() {
    for (case, condition, operands) in [
        ("a threshold", "storyline_broker_up == 0", &["storyline_broker_up"][..]),
        (
            "two comparisons, one against another series, one `offset`",
            "a:sum < 0.8 * max_over_time(a:sum[5m]) and rate(b_total[1h] offset 30m) >= bool 100",
            &["a:sum", "0.8 * max_over_time(a:sum[5m])", "rate(b_total[1h])"][..],
        ),
        (
            "`or` of parenthesised `and`s, computed thresholds, a repeated operand",
            "(x_1h > (14.4 * 0.001) and x_5m > (14.4 * 0.001)) or (x_6h > 0.006 unless on (job) x_1h != 1)",
            &["x_1h", "x_5m", "x_6h"][..],
        ),
        (
            "matchers that look like operators",
            r#"sum(rate(c_total{status=~"5..",op!="tail"}[5m])) / sum(rate(c_total[5m])) > 0.01"#,
            &[r#"sum(rate(c_total{status=~"5..",op!="tail"}[5m])) / sum(rate(c_total[5m]))"#][..],
        ),
    ] {
        assert_eq!(condition_operands(condition), operands, "{case}");
    }
}
