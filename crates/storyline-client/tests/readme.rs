//! The README's agent example is `examples/agent.rs` exactly, and it runs as written against a real server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{path::PathBuf, process::Command, sync::Arc};

use storyline_broker_memory::MemoryBroker;
use storyline_testkit::spawn_app;

const MARKER: &str = "<!-- example: agent -->";

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

/// The ```rust block after the marker line, without its fences.
fn readme_block(readme: &str) -> Option<String> {
    let after = readme.split_once(&format!("{MARKER}\n"))?.1;
    let code = after.trim_start_matches('\n').strip_prefix("```rust\n")?;
    let end = code.find("\n```")?;
    Some(format!("{}\n", &code[..end]))
}

#[test]
fn the_readme_agent_example_is_examples_agent_rs() {
    let readme = std::fs::read_to_string(repo_file("README.md")).expect("README.md");
    let block = readme_block(&readme).unwrap_or_else(|| panic!("README.md has no ```rust block after {MARKER}"));
    let example = std::fs::read_to_string(repo_file("crates/storyline-client/examples/agent.rs")).expect("agent.rs");
    assert_eq!(block, example, "the README's agent example and crates/storyline-client/examples/agent.rs differ");
    assert!(example.lines().count() <= 20, "about ten lines of body: {} lines", example.lines().count());
}

#[test]
fn the_block_extractor_finds_the_code_after_the_marker() {
    let text = format!("# T\n{MARKER}\n```rust\nfn main() {{}}\n```\nmore\n```rust\nnot this\n```\n");
    assert_eq!(readme_block(&text).as_deref(), Some("fn main() {}\n"));
    assert_eq!(readme_block("no marker"), None);
}

/// `target/<profile>/examples/agent`, which `cargo test` builds beside the test binaries (`.../deps/`).
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps");
    let binary = profile_dir.join("examples").join(format!("agent{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: run `cargo test -p storyline-client` (which builds the examples), not only `--test readme`",
        binary.display()
    );
    binary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_example_publishes_three_steps_and_reads_them_back() {
    let binary = example_binary();
    let app = spawn_app(Arc::new(MemoryBroker::new(Default::default()))).await;
    let token = app.token("agent-1", "read:agent-demo write:agent-demo");
    let (url, token_env) = (app.base.clone(), token.clone());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(binary).env("STORYLINE_URL", url).env("STORYLINE_TOKEN", token_env).output().expect("run agent")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "agent failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));

    let ids = app.all_ids("agent-demo").await;
    assert_eq!(ids.len(), 3, "three events stored: {stdout}");
    let (_, page) = app.history("agent-demo", "").await;
    let steps: Vec<&str> =
        page["events"].as_array().unwrap().iter().map(|e| e["data"]["step"].as_str().unwrap()).collect();
    assert_eq!(steps, ["plan", "act", "report"]);
    assert!(page["events"].as_array().unwrap().iter().all(|e| e["author"] == "agent-1"));
    let expected: Vec<String> = ids
        .iter()
        .zip(["plan", "act", "report"])
        .map(|(id, step)| format!("published {id} {step}"))
        .chain(ids.iter().zip(["plan", "act", "report"]).map(|(id, step)| format!("read {id} {{\"step\":\"{step}\"}}")))
        .collect();
    assert_eq!(stdout.lines().collect::<Vec<_>>(), expected, "what the agent printed");
    app.stop().await;
}
