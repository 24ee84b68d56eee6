//! `GET /v1/streams?stories=a,b,c`: several stories' events on one Server-Sent Events stream, so that a page
//! showing many stories needs one connection, not one per story (a browser opens at most six per origin over
//! HTTP/1.1).
//!
//! The wire contract (also in the OpenAPI and AsyncAPI documents):
//! - `stories`: 1 to `max_stories_per_stream` distinct story ids, comma-separated. Every one must be readable by
//!   the principal before anything opens (403 naming the first that is not). The connection counts as one stream
//!   against every limit.
//! - The resume cursor, the `id:` of every frame: one position per story, in the order of `stories`, joined by
//!   `,` (`<ms>-<seq>`: after that event; `0`: from the oldest retained). A native `EventSource` sends it back
//!   unchanged as `Last-Event-ID`; the `last_event_id` query parameter does the same for other clients (the
//!   header wins). Without one, each story starts at its newest id at open (only new events).
//! - After `retry:`, an id-only frame names every story's start position, so a reader that reconnects before any
//!   event arrives still resumes exactly. Then each event's frame: `id:` the cursor with its story advanced to
//!   it, `event:` its type, `data:` its envelope (which names its story). Per story in log order; across
//!   stories, any interleaving.
//! - A story whose resume point fell out of retention gets a `gap` frame naming the story, with an `id:` whose
//!   cursor moved that story just before `resumed_from`, so resuming after it does not report the hole again.
//! - Heartbeats, the drain, token expiry, slow consumers and broker outages behave as on the single-story
//!   stream: the response body is that stream's ([`stream::Body`]); only its source of frames differs.
//!
//! Cost model: every story is a cursor into its story's shared feed (frames encoded once per event and shared,
//! as for the single stream); a frame's `event:`/`data:` bytes are the shared buffer ([`EventFrame::fields`]),
//! and only its `id:` line is written per connection: O(stories) bytes (at most 41 per story) formatted per
//! frame, plus one small allocation per frame for the merge. Per open stream, each story holds its
//! subscription and a boxed step future (a few hundred bytes).

use std::{collections::VecDeque, fmt::Write as _, pin::Pin, time::Duration};

use actix_web::{HttpRequest, HttpResponse, get, web};
use futures::{Stream, StreamExt, stream::SelectAll};
use serde::Deserialize;
use storyline_core::{EventId, Gap, StoryId};
use storyline_hub::{Bytes, Delivery, encode_story_gap, position_after_gap};

use super::stream::{self, Advance, Phase, STREAM_LOG, Source, Start};
use crate::{auth::Principal, error::ApiError, meters, startup::AppState};

#[derive(Debug, Deserialize)]
pub(crate) struct StreamsQuery {
    stories: Option<String>,
    last_event_id: Option<String>,
}

/// Subscribe to several stories' events on one stream (Server-Sent Events).
#[utoipa::path(
    get,
    path = "/v1/streams",
    tag = "events",
    params(
        ("stories" = String, Query, pattern = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}(,[A-Za-z0-9][A-Za-z0-9_.:-]{0,127})*$", description = "The stories, comma-separated: 1 to `STORYLINE_MAX_STORIES_PER_STREAM` (default 32) distinct story ids. Their order is the order of the cursor's positions."),
        ("Last-Event-ID" = Option<String>, Header, nullable = false, pattern = "^(|(0|[0-9]{1,20}-[0-9]{1,20})(,(0|[0-9]{1,20}-[0-9]{1,20}))*)$", description = "Resume cursor: the `id` of the last frame received, one position per story in the order of `stories`, joined by `,` (`<ms>-<seq>`: after that event; `0`: from the oldest retained). Wins over `last_event_id`. Empty: none (each story from its newest event at open)."),
        ("last_event_id" = Option<String>, Query, pattern = "^(|(0|[0-9]{1,20}-[0-9]{1,20})(,(0|[0-9]{1,20}-[0-9]{1,20}))*)$", description = "Resume cursor, as `Last-Event-ID` (for clients that cannot set headers)."),
        ("access_token" = Option<String>, Query, description = "Token, for EventSource (which cannot set headers)"),
    ),
    responses(
        (status = 200, description = "An endless `text/event-stream` carrying every named story. First `retry:`, then an id-only frame (`id: <cursor>`, no data) naming every story's start position. Each event frame carries `id` (the cursor, with the event's story at this event), `event` (the event type) and `data` (the envelope, which names its story); per story in log order, across stories interleaved. A `gap` event (data: StoryGapData, with an `id` whose cursor moved past the hole) precedes a story's events after a hole. The cursor is O(stories) bytes on every frame. Heartbeats, `token-expired`, `token-revoked`, the drain and slow consumers as on the single-story stream.", body = crate::openapi::StreamsEvent, content_type = "text/event-stream"),
        (status = 400, description = "No stories, a bad or repeated story id (`bad-story-id`, `bad-query`), more than the limit (`too-many-stories`), a cursor without one position per story (`bad-cursor`) or with a bad position (`bad-event-id`)", body = crate::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token (`unauthenticated`), or a revoked one (`token-revoked`)", body = crate::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks read scope for one of the stories (`forbidden`, naming it; nothing is opened), or the client address is not allowed (`ip-denied`)", body = crate::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many new streams from this client address, or too many open streams for this principal (`rate-limited`); the connection counts as one stream; see Retry-After", body = crate::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The instance is shutting down (`draining`) or at capacity (`at-capacity`); see Retry-After. (A broker outage does not fail the open.)", body = crate::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("access_token" = []), ("cookie" = []))
)]
#[get("/v1/streams")]
pub(crate) async fn streams(
    req: HttpRequest,
    principal: Principal,
    query: web::Query<StreamsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let stories = parse_stories(query.stories.as_deref().unwrap_or_default(), state.config.max_stories_per_stream)?;
    for story in &stories {
        principal.require_read(story)?;
    }
    let cursor = resume_cursor(&req, query.last_event_id.as_deref(), stories.len())?;
    let slot = stream::admit(&req, &state, &principal)?;
    let resumes: Vec<Option<EventId>> = match &cursor {
        Some(positions) => positions.iter().copied().map(Some).collect(),
        None => vec![None; stories.len()],
    };
    let starts =
        futures::future::join_all(stories.iter().zip(&resumes).map(|(s, r)| stream::open_start(&state, s, *r))).await;
    let mut lanes = Vec::with_capacity(stories.len());
    let mut positions = Vec::with_capacity(stories.len());
    let mut gaps = Vec::new();
    for (index, ((story, resume), start)) in stories.iter().zip(&resumes).zip(starts).enumerate() {
        let phase = match start? {
            Start::Resolved(point) => {
                positions.push(resume.unwrap_or(point.after));
                gaps.extend(point.gap.map(|gap| (index, gap)));
                Phase::Live(stream::subscribe(&state, story, *resume, point))
            }
            Start::Pending(resume) => {
                positions.push(resume.unwrap_or(EventId::ZERO));
                Phase::Resolving(resume)
            }
        };
        lanes.push(Lane { index, story: story.clone(), phase, backoff: stream::RETRY_MIN, state: state.clone() });
    }
    tracing::info!(
        target: STREAM_LOG,
        story = %join(&stories),
        stories = stories.len(),
        sub = %principal.sub,
        tier = principal.tier.as_str(),
        resume = ?cursor.as_ref().map(|c| render_cursor(c)),
        "stream opened"
    );
    let mut preface = stream::preface(&state.config);
    let mut merged = Merged { stories, positions, gaps, state: Lanes::Opening(Vec::new()) };
    if lanes.iter().all(|lane| matches!(lane.phase, Phase::Live(_))) {
        // The usual case: the id-only frame goes right after `retry:`, before any heartbeat.
        merged.start(lanes, &mut preface);
    } else {
        merged.state = Lanes::Opening(lanes);
    }
    Ok(stream::respond(&req, &principal, slot, preface, merged))
}

/// The `stories` parameter: comma-separated story ids, at least one, at most `limit`, none twice.
pub(crate) fn parse_stories(raw: &str, limit: usize) -> Result<Vec<StoryId>, ApiError> {
    if raw.is_empty() {
        return Err(ApiError::BadQuery("`stories` must name at least one story (comma-separated story ids)".into()));
    }
    let count = raw.split(',').count();
    if count > limit {
        return Err(ApiError::TooManyStories { count, limit });
    }
    let mut stories: Vec<StoryId> = Vec::with_capacity(count);
    for id in raw.split(',') {
        let story = super::story_from_path(id)?;
        if stories.contains(&story) {
            return Err(ApiError::BadQuery(format!("`stories` names story {story} twice")));
        }
        stories.push(story);
    }
    Ok(stories)
}

/// The resume cursor (`Last-Event-ID`, else `last_event_id`; empty: none): exactly `stories` positions.
pub(crate) fn resume_cursor(
    req: &HttpRequest,
    query: Option<&str>,
    stories: usize,
) -> Result<Option<Vec<EventId>>, ApiError> {
    let Some(raw) = stream::resume_value(req, query) else { return Ok(None) };
    let positions = raw.split(',').count();
    if positions != stories {
        return Err(ApiError::CursorMismatch { positions, stories });
    }
    raw.split(',').map(super::event_id).collect::<Result<Vec<_>, _>>().map(Some)
}

fn join(stories: &[StoryId]) -> String {
    stories.iter().map(StoryId::as_ref).collect::<Vec<_>>().join(",")
}

/// The cursor as the `id:` field carries it: one position per story, `0` for "from the oldest retained".
fn render_cursor(positions: &[EventId]) -> String {
    let mut out = String::with_capacity(positions.len() * 24);
    write_cursor(&mut out, positions);
    out
}

fn write_cursor(out: &mut String, positions: &[EventId]) {
    for (i, position) in positions.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if position.is_zero() {
            out.push('0');
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "{position}");
        }
    }
}

/// `id: <cursor>\n`, ended by a blank line (`\n`) for the id-only frame, or followed by a frame's shared fields.
/// Per event and connection: the cursor is written straight into the one buffer sent (one allocation).
pub(crate) fn cursor_line(positions: &[EventId], id_only: bool) -> Bytes {
    let mut line = String::with_capacity(positions.len() * 24 + 6);
    line.push_str("id: ");
    write_cursor(&mut line, positions);
    line.push('\n');
    if id_only {
        line.push('\n');
    }
    Bytes::from(line)
}

/// One story of a many-story stream: its phase (resolving its start, or live), read by the single stream's step.
struct Lane {
    index: usize,
    story: StoryId,
    phase: Phase,
    backoff: Duration,
    state: web::Data<AppState>,
}

impl Lane {
    async fn advance(&mut self) -> Advance {
        stream::advance(&mut self.phase, &self.state, &self.story, &mut self.backoff).await
    }

    /// The lane as an endless stream of its steps, for the merge.
    fn into_stream(self) -> LaneStream {
        Box::pin(futures::stream::unfold(self, |mut lane| async move {
            let advance = lane.advance().await;
            Some(((lane.index, advance), lane))
        }))
    }
}

type LaneStream = Pin<Box<dyn Stream<Item = (usize, Advance)>>>;

enum Lanes {
    /// Some story's start is not resolved yet (the broker was unreachable at open): nothing is sent, heartbeats
    /// aside, until every story's start position is known, so that the id-only frame names them all (then it
    /// may follow heartbeats; otherwise it comes right after `retry:`).
    Opening(Vec<Lane>),
    /// Every story's subscription, merged: whichever has a frame first.
    Live(SelectAll<LaneStream>),
}

/// The stories of a many-story stream, merged into one source of frames with the cursor.
struct Merged {
    stories: Vec<StoryId>,
    /// Each story's position: where a resume with the cursor continues it.
    positions: Vec<EventId>,
    /// Start-up gap notices (resume ids a story never issued), sent after the id-only frame.
    gaps: Vec<(usize, Gap)>,
    state: Lanes,
}

impl Merged {
    /// The id-only frame, then the start-up gap notices, once every start is known.
    fn start(&mut self, lanes: Vec<Lane>, out: &mut VecDeque<Bytes>) {
        out.push_back(cursor_line(&self.positions, true));
        for (index, gap) in std::mem::take(&mut self.gaps) {
            self.gap(index, gap, out);
        }
        self.state = Lanes::Live(futures::stream::select_all(lanes.into_iter().map(Lane::into_stream)));
    }

    fn gap(&mut self, index: usize, gap: Gap, out: &mut VecDeque<Bytes>) {
        let (Some(position), Some(story)) = (self.positions.get_mut(index), self.stories.get(index)) else { return };
        *position = position_after_gap(gap);
        out.push_back(cursor_line(&self.positions, false));
        out.push_back(encode_story_gap(story, gap));
    }

    fn apply(&mut self, index: usize, advance: Advance, out: &mut VecDeque<Bytes>) {
        match advance {
            Advance::Delivered(Delivery::Event(frame)) => {
                let Some(position) = self.positions.get_mut(index) else { return };
                *position = frame.id;
                meters::delivered(&frame);
                out.push_back(cursor_line(&self.positions, false));
                out.push_back(frame.fields());
            }
            Advance::Delivered(Delivery::Gap(gap)) => self.gap(index, gap, out),
            Advance::Started { from, gap } => {
                if let Some(position) = self.positions.get_mut(index) {
                    *position = from;
                }
                self.gaps.extend(gap.map(|gap| (index, gap)));
            }
            Advance::Again => {}
        }
    }
}

impl Source for Merged {
    async fn next(&mut self, _: &AppState, out: &mut VecDeque<Bytes>) {
        match &mut self.state {
            Lanes::Opening(lanes) => {
                // Resolve the pending starts one by one (each waits out its backoff while the broker fails).
                if let Some(lane) = lanes.iter_mut().find(|lane| matches!(lane.phase, Phase::Resolving(_))) {
                    let index = lane.index;
                    let advance = lane.advance().await;
                    self.apply(index, advance, out);
                    return;
                }
                let lanes = std::mem::take(lanes);
                self.start(lanes, out);
            }
            Lanes::Live(merged) => {
                if let Some((index, advance)) = merged.next().await {
                    self.apply(index, advance, out);
                    while let Some((index, gap)) = self.gaps.pop() {
                        self.gap(index, gap, out);
                    }
                }
            }
        }
    }

    fn describe(&self) -> (String, Option<String>) {
        (join(&self.stories), Some(render_cursor(&self.positions)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_names_every_story_in_order_with_0_for_the_oldest() {
        let positions = [EventId::new(1_733_270_400_000, 0), EventId::ZERO, EventId::new(1_733_270_400_123, 4)];
        assert_eq!(render_cursor(&positions), "1733270400000-0,0,1733270400123-4");
        assert_eq!(&cursor_line(&positions[1..2], true)[..], b"id: 0\n\n", "the id-only frame");
    }

    #[test]
    fn stories_are_one_to_the_limit_distinct_valid_ids() {
        assert_eq!(parse_stories("a,b:c,d", 3).map(|s| join(&s)).ok().as_deref(), Some("a,b:c,d"));
        let status = |raw: &str, limit| parse_stories(raw, limit).err().map(|e| e.problem().problem_type);
        let slug = |s: &str| Some(format!("urn:storyline:problem:{s}"));
        for (raw, limit, expected, case) in [
            ("", 32, slug("bad-query"), "empty"),
            ("a,a", 32, slug("bad-query"), "duplicate"),
            ("a,,b", 32, slug("bad-story-id"), "empty id"),
            ("a,b c", 32, slug("bad-story-id"), "bad id"),
            ("a,b,c", 2, slug("too-many-stories"), "too many"),
        ] {
            assert_eq!(status(raw, limit), expected, "case {case}");
        }
    }
}
