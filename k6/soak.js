// The publishers of the soak test: AI agents appending story events at a constant arrival rate, one agent (and
// token) per story, each event with its own Idempotency-Key. Run by scripts/soak.sh next to the readers
// (`storyline-bench soak-readers`, which hold the SSE streams: k6 has no SSE client) and judged with them.
//
// Every acknowledged event (201, or 200 for an idempotent repeat) is written to k6's log as one JSON line
// {"ack": {"story", "id", "key"}} (run with --log-format raw --log-output file=...), so the readers' verdict can
// check that each one is in the story's log and reached every reader. A 503 `unconfirmed` (the append may have
// been stored) is retried with the same key, as the API asks; so is a 503/429 with Retry-After. Nothing else is.
//
// Thresholds that fail the run (k6 exits 99): the share of events that failed after their retries, the p99 of
// POST durations, and dropped iterations (the rate was not held). handleSummary writes the figures the verdict
// reads to SOAK_SUMMARY.
//
// Environment (all required unless a default is given):
//   SOAK_URL           storyline's base URL, http://127.0.0.1:<port>
//   SOAK_STORIES       comma-separated story ids
//   SOAK_TOKENS        comma-separated agent tokens, one per story, in the same order (write scope for it)
//   SOAK_RATE          events per second over all stories (default 40)
//   SOAK_DURATION      k6 duration, e.g. 90s, 30m (default 90s)
//   SOAK_RUN           a run id, prefix of every Idempotency-Key (default: the start time)
//   SOAK_SUMMARY       where handleSummary writes its JSON (default soak-k6-summary.json)
//   SOAK_MAX_FAILED    largest tolerated share of failed events (default 0: none may fail)
//   SOAK_POST_P99_MS   bound on the POST p99 in ms (default 250)
//   SOAK_PAYLOAD_BYTES size of the text in each event (default 200)

import http from 'k6/http';
import exec from 'k6/execution';
import { sleep } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';

import { env, envNumber, isUnconfirmed, retryAfterSecs } from './lib/env.js';

const BASE = env('SOAK_URL');
const STORIES = env('SOAK_STORIES').split(',');
const TOKENS = env('SOAK_TOKENS').split(',');
const RATE = envNumber('SOAK_RATE', 40);
const DURATION = env('SOAK_DURATION', '90s');
const RUN = env('SOAK_RUN', String(Date.now()));
const SUMMARY = env('SOAK_SUMMARY', 'soak-k6-summary.json');
const MAX_FAILED = envNumber('SOAK_MAX_FAILED', 0);
const POST_P99_MS = envNumber('SOAK_POST_P99_MS', 250);
const TEXT = 'x'.repeat(envNumber('SOAK_PAYLOAD_BYTES', 200));
// Attempts per event: the first POST and its retries (503 unconfirmed / at capacity, 429).
const MAX_ATTEMPTS = 5;

if (STORIES.length !== TOKENS.length) {
  throw new Error(`SOAK_STORIES has ${STORIES.length} stories but SOAK_TOKENS ${TOKENS.length} tokens`);
}

const postDuration = new Trend('soak_post_duration', true);
const eventFailed = new Rate('soak_event_failed');
const acked = new Counter('soak_acked');
const retries = new Counter('soak_retries');
const requests = new Counter('soak_requests');

export const options = {
  discardResponseBodies: false,
  scenarios: {
    agents: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: Math.max(4, Math.ceil(RATE / 10)),
      maxVUs: Math.max(20, RATE),
      gracefulStop: '10s',
    },
  },
  thresholds: {
    soak_event_failed: [`rate<=${MAX_FAILED}`],
    soak_post_duration: [`p(99)<${POST_P99_MS}`],
    // The arrival rate held: at most 1% of the planned iterations dropped for want of a free VU.
    dropped_iterations: [`count<=${Math.ceil(RATE * durationSecs(DURATION) * 0.01)}`],
  },
  summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)', 'max'],
};

function durationSecs(text) {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(text);
  if (!match) throw new Error(`SOAK_DURATION ${text} is not <number><ms|s|m|h>`);
  return Number(match[1]) * { ms: 0.001, s: 1, m: 60, h: 3600 }[match[2]];
}

export default function () {
  const n = exec.scenario.iterationInTest;
  const index = n % STORIES.length;
  const story = STORIES[index];
  const key = `${RUN}-${n}`;
  const body = JSON.stringify({ type: 'soak.line', data: { key, seq: n, agent: `agent-${index}`, text: TEXT } });
  const params = {
    headers: {
      Authorization: `Bearer ${TOKENS[index]}`,
      'Content-Type': 'application/json',
      'Idempotency-Key': key,
    },
    tags: { name: 'publish' },
    timeout: '10s',
  };
  for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
    const response = http.post(`${BASE}/v1/stories/${story}/events`, body, params);
    requests.add(1);
    if (response.status !== 0) postDuration.add(response.timings.duration);
    if (response.status === 201 || response.status === 200) {
      const receipt = response.json();
      console.log(JSON.stringify({ ack: { story, id: receipt.id, key } }));
      acked.add(1);
      eventFailed.add(false);
      return;
    }
    const retryable = isUnconfirmed(response) || response.status === 429 || response.status === 503;
    if (!retryable || attempt === MAX_ATTEMPTS) {
      console.warn(`event ${key} to ${story} failed: status ${response.status} ${response.body}`);
      eventFailed.add(true);
      return;
    }
    retries.add(1);
    sleep(Math.min(retryAfterSecs(response), 5));
  }
}

export function handleSummary(data) {
  const m = (name) => data.metrics[name] || { values: {}, thresholds: {} };
  const thresholds = [];
  for (const [metric, values] of Object.entries(data.metrics)) {
    for (const [threshold, result] of Object.entries(values.thresholds || {})) {
      thresholds.push({ metric, threshold, ok: result.ok });
    }
  }
  const failedRate = m('soak_event_failed').values;
  const post = m('soak_post_duration').values;
  const events = (failedRate.passes || 0) + (failedRate.fails || 0);
  const summary = {
    events,
    acked: m('soak_acked').values.count || 0,
    failed: failedRate.passes || 0,
    failure_rate: failedRate.rate || 0,
    requests: m('soak_requests').values.count || 0,
    retries: m('soak_retries').values.count || 0,
    post_ms: { avg: post.avg || 0, p50: post.med || 0, p95: post['p(95)'] || 0, p99: post['p(99)'] || 0, max: post.max || 0 },
    dropped_iterations: m('dropped_iterations').values.count || 0,
    thresholds,
  };
  return {
    [SUMMARY]: JSON.stringify(summary, null, 2) + '\n',
    stdout: `k6: ${summary.events} events, ${summary.acked} acked, ${summary.failed} failed, ${summary.retries} retries; ` +
      `POST p50 ${summary.post_ms.p50.toFixed(2)} ms, p95 ${summary.post_ms.p95.toFixed(2)} ms, p99 ${summary.post_ms.p99.toFixed(2)} ms; ` +
      `thresholds ${thresholds.every((t) => t.ok) ? 'passed' : 'FAILED: ' + thresholds.filter((t) => !t.ok).map((t) => `${t.metric} ${t.threshold}`).join(', ')}\n`,
  };
}
