#![allow(clippy::print_stdout, reason = "an example shows what it did")]
use storyline_client::{Client, Event, EventType, HistoryQuery, StoryId};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("STORYLINE_URL")?;
    let client = Client::builder(url).token(std::env::var("STORYLINE_TOKEN")?).build()?;
    let story = StoryId::parse("agent-demo")?;
    for step in ["plan", "act", "report"] {
        let event = Event::new(EventType::parse("step")?, serde_json::json!({ "step": step }));
        let receipt = client.publish(&story, &event).await?; // retried safely: one Idempotency-Key per event
        println!("published {} {step}", receipt.id);
    }
    for event in client.history(&story, HistoryQuery::default()).await?.events {
        println!("read {} {}", event.id, event.data);
    }
    Ok(())
}
