//! A run's parameters ([`BenchConfig`], what the CLI builds and what workers receive as JSON) and their parsed,
//! validated form ([`Plan`]). Everything that can be wrong with a template, URL or header is found here, before
//! any connection is made.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::template::{BODY_VARS, HeaderTemplate, PUBLISH_VARS, STREAM_VARS, Template, UrlTemplate, Var, check_value};

/// What a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Open the streams, publish at `--rate` for `--duration`, measure deliveries.
    Publish,
    /// Open the streams and hold them for `--duration` without publishing; measure memory per stream.
    Idle,
}

/// A run's parameters, as given.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchConfig {
    pub scenario: Scenario,
    /// A name for the run, used in the report and the plot title.
    pub label: String,
    pub stream_url: String,
    pub stream_headers: Vec<String>,
    pub publish_url: String,
    pub publish_body: String,
    pub publish_headers: Vec<String>,
    /// Substituted for `{token}`. Workers receive it; the report leaves it out.
    #[serde(default)]
    pub token: String,
    pub streams: u64,
    pub stories: usize,
    pub story_prefix: String,
    /// Events per second, in total across stories.
    pub rate: f64,
    pub duration_secs: f64,
    pub settle_secs: f64,
    pub drain_secs: f64,
    pub payload_bytes: usize,
    pub publishers: usize,
    pub connect_concurrency: usize,
    pub connect_timeout_secs: f64,
    /// Loopback source addresses connections are bound to, in rotation.
    pub source_ips: Vec<IpAddr>,
    pub procs: usize,
    /// Runtime worker threads for the subscribers of each process.
    pub threads: usize,
    pub server_pid: Option<u32>,
}

/// `--source-ips`: a count (`4` = 127.0.0.1..127.0.0.4) or a comma-separated list of loopback addresses.
pub fn parse_source_ips(text: &str) -> anyhow::Result<Vec<IpAddr>> {
    if let Ok(count) = text.trim().parse::<u8>() {
        if count == 0 {
            bail!("--source-ips: the count must be 1..=254");
        }
        return Ok((1..=count).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))).collect());
    }
    let ips = text
        .split(',')
        .map(|part| part.trim().parse::<IpAddr>().with_context(|| format!("--source-ips: {part:?} is not an IP")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(ip) = ips.iter().find(|ip| !ip.is_loopback()) {
        bail!("--source-ips: {ip} is not a loopback address");
    }
    Ok(ips)
}

/// A validated run: parsed templates and derived numbers.
#[derive(Debug, Clone)]
pub struct Plan {
    pub config: BenchConfig,
    pub stream_url: UrlTemplate,
    pub stream_headers: Vec<HeaderTemplate>,
    pub publish_url: UrlTemplate,
    pub publish_headers: Vec<HeaderTemplate>,
    pub publish_body: Template,
    /// Source addresses matching the target's address family.
    pub source_ips: Vec<IpAddr>,
}

impl Plan {
    pub fn new(config: BenchConfig) -> anyhow::Result<Plan> {
        check_value("--token", &config.token)?;
        check_value("--story-prefix", &config.story_prefix)?;
        if config.streams == 0 {
            bail!("--streams must be at least 1");
        }
        if config.stories == 0 {
            bail!("--stories must be at least 1");
        }
        if config.procs == 0 || config.publishers == 0 || config.connect_concurrency == 0 || config.threads == 0 {
            bail!("--procs, --publishers, --connect-concurrency and --threads must be at least 1");
        }
        for (name, secs) in [
            ("--duration", config.duration_secs),
            ("--settle", config.settle_secs),
            ("--drain", config.drain_secs),
            ("--connect-timeout", config.connect_timeout_secs),
        ] {
            if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
                bail!("{name} must be between 0 and 86400 seconds, got {secs}");
            }
        }
        if config.scenario == Scenario::Publish && !(config.rate.is_finite() && config.rate > 0.0) {
            bail!("--rate must be a positive number of events per second, got {}", config.rate);
        }
        let stream_url = UrlTemplate::parse("--stream-url", &config.stream_url, STREAM_VARS)?;
        let publish_url = UrlTemplate::parse("--publish-url", &config.publish_url, PUBLISH_VARS)?;
        if config.stories > 1 {
            stream_url.path.require("--stream-url (with several stories)", Var::Story)?;
            publish_url.path.require("--publish-url (with several stories)", Var::Story)?;
        }
        let publish_body = Template::parse("--publish-body", &config.publish_body, BODY_VARS)?;
        publish_body.require("--publish-body", Var::Seq)?;
        publish_body.require("--publish-body", Var::SentUs)?;
        let stream_headers = config
            .stream_headers
            .iter()
            .map(|h| HeaderTemplate::parse("--stream-header", h, STREAM_VARS))
            .collect::<Result<Vec<_>, _>>()?;
        let publish_headers = config
            .publish_headers
            .iter()
            .map(|h| HeaderTemplate::parse("--publish-header", h, PUBLISH_VARS))
            .collect::<Result<Vec<_>, _>>()?;
        let source_ips = if stream_url.addr.is_ipv4() {
            let v4: Vec<IpAddr> = config.source_ips.iter().copied().filter(IpAddr::is_ipv4).collect();
            if v4.is_empty() {
                bail!("--source-ips: the stream URL is IPv4 but no IPv4 source address was given");
            }
            v4
        } else {
            // IPv6 has one loopback address.
            vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]
        };
        Ok(Plan { config, stream_url, stream_headers, publish_url, publish_headers, publish_body, source_ips })
    }

    pub fn story_name(&self, story: usize) -> String {
        format!("{}{story}", self.config.story_prefix)
    }

    /// Events the publisher sends: `floor(rate × duration)`.
    pub fn total_events(&self) -> u64 {
        match self.config.scenario {
            Scenario::Idle => 0,
            Scenario::Publish => crate::publisher::total_events(self.config.rate, self.config.duration_secs),
        }
    }

    /// Seqs a story can receive (`0..limit`): anything beyond is unexpected.
    pub fn seq_limit(&self) -> u64 {
        self.total_events().div_ceil(self.config.stories as u64)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn config() -> BenchConfig {
        BenchConfig {
            scenario: Scenario::Publish,
            label: "test".into(),
            stream_url: "http://127.0.0.1:8080/v1/stories/{story}/stream?access_token={token}".into(),
            stream_headers: vec![],
            publish_url: "http://127.0.0.1:8080/v1/stories/{story}/events".into(),
            publish_body: r#"{"type":"bench","data":{"seq":{seq},"sent_us":{sent_us},"pad":"{pad}"}}"#.into(),
            publish_headers: vec!["Authorization: Bearer {token}".into()],
            token: "t".into(),
            streams: 10,
            stories: 2,
            story_prefix: "bench-".into(),
            rate: 100.0,
            duration_secs: 2.0,
            settle_secs: 0.0,
            drain_secs: 1.0,
            payload_bytes: 200,
            publishers: 2,
            connect_concurrency: 10,
            connect_timeout_secs: 5.0,
            source_ips: parse_source_ips("2").unwrap(),
            procs: 1,
            threads: 1,
            server_pid: None,
        }
    }

    #[test]
    fn a_good_config_makes_a_plan() {
        let plan = Plan::new(config()).unwrap();
        assert_eq!(plan.total_events(), 200);
        assert_eq!(plan.seq_limit(), 100);
        assert_eq!(plan.story_name(3), "bench-3");
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        type Case = (&'static str, fn(&mut BenchConfig));
        let cases: [Case; 6] = [
            ("{story}", |c| c.stream_url = "http://127.0.0.1:1/stream".into()),
            ("{sent_us}", |c| c.publish_body = r#"{"seq":{seq}}"#.into()),
            ("not a loopback", |c| c.publish_url = "http://192.168.1.1/x".into()),
            ("--rate", |c| c.rate = 0.0),
            ("--publish-header", |c| c.publish_headers = vec!["nonsense".into()]),
            ("line breaks", |c| c.token = "a\r\nX-Injected: 1".into()),
        ];
        for (expected, change) in cases {
            let mut c = config();
            change(&mut c);
            let err = format!("{:#}", Plan::new(c).unwrap_err());
            assert!(err.contains(expected), "expected {expected:?} in {err:?}");
        }
    }

    #[test]
    fn source_ips_from_a_count_or_a_list() {
        assert_eq!(parse_source_ips("3").unwrap().len(), 3);
        assert_eq!(parse_source_ips("127.0.0.9, ::1").unwrap().len(), 2);
        assert!(parse_source_ips("10.0.0.1").is_err());
        assert!(parse_source_ips("0").is_err());
    }
}
