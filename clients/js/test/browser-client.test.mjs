// The client in real headless Chromium (Debian's, through playwright-core) against the real binary: a page on
// its own origin loads clients/js/src/storyline.js and reads storyline cross-origin (STORYLINE_CORS_ORIGINS), as
// a web app would. Each case runs the fetch transport and the native EventSource transport side by side and
// compares what each delivered with what the publisher had acknowledged, exactly.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startRedis, startStoryline, restartStoryline, startPublisher, pollUntil, mintToken, history, summary,
} from './helpers.mjs';
import { launchChromium, clientPageServer } from './browser.mjs';

const FAST = { baseMs: 100, capMs: 1000 };
const TRANSPORTS = [
  ['fetch', { transport: 'fetch' }],
  ['eventsource', { transport: 'eventsource', eventTypes: ['chapter'] }],
];

let browser;
let pages;
before(async () => {
  browser = await launchChromium();
  pages = await clientPageServer();
});
after(async () => {
  await browser?.close();
  await pages?.close();
});

async function openClientPage() {
  const page = await browser.page();
  await page.goto(pages.origin + '/');
  await page.waitForFunction(() => window.ready === true);
  return page;
}

/** Starts one recorded subscription per transport in the page. */
async function subscribeBoth(page, stories, baseUrl, extra) {
  for (const [name, transport] of TRANSPORTS) {
    await page.evaluate(([n, s, o]) => window.record(n, s, o), [name, stories, { baseUrl, backoff: FAST, ...transport, ...extra }]);
  }
  await pollUntil('both streams open', () => page.evaluate(() =>
    Object.values(window.subs).every(({ rec }) => rec.statuses.some((s) => s.state === 'open'))));
}

const recorded = (page, name) => page.evaluate((n) => ({ ...window.subs[n].rec, stats: window.subs[n].sub.stats }), name);

async function untilBothDelivered(page, last) {
  await pollUntil(`${last} delivered in the browser`, () => page.evaluate((id) =>
    Object.values(window.subs).every(({ rec }) => rec.events.some((e) => e.id === id)), last), 20_000);
}

function assertExact(got, acked, what) {
  const ids = got.events.map((e) => e.id);
  assert.equal(new Set(ids).size, ids.length, `${what}: no duplicate delivered`);
  assert.deepEqual(ids, acked, `${what}: exactly the acknowledged events, in order`);
}

test('chromium: kill -9 and restart (Redis) mid-stream: exact on both transports', async (t) => {
  const redis = await startRedis();
  const env = { STORYLINE_CORS_ORIGINS: pages.origin };
  let server = await startStoryline({ redisUrl: redis.url, env });
  const { port, baseUrl } = server;
  const page = await openClientPage();
  t.after(async () => {
    await page.close();
    await server.stop();
    await redis.stop();
  });
  const story = 'restart-chromium';
  await subscribeBoth(page, story, baseUrl, { token: mintToken(), lastEventId: '0' });
  const pub = startPublisher(baseUrl, story);
  await pollUntil('events before the kill', () => pub.acked.length >= 40);
  await server.stop('SIGKILL');
  server = await restartStoryline(port, { redisUrl: redis.url, env });
  const restarted = pub.acked.length;
  await pollUntil('events after the restart', () => pub.acked.length >= restarted + 40);
  const acked = await pub.stop();
  await untilBothDelivered(page, acked[acked.length - 1]);
  for (const [name] of TRANSPORTS) {
    const got = await recorded(page, name);
    summary(`restart (chromium, ${name})`, {
      acknowledged: acked.length, delivered: got.events.length, duplicates_dropped: got.stats.duplicates, connections: got.stats.connections,
    });
    assertExact(got, acked, name);
    assert.ok(got.stats.connections >= 2, `${name}: reconnected`);
  }
});

test('chromium: drain with 503 draining on reopen, Retry-After honoured, then a new instance: exact', async (t) => {
  const redis = await startRedis();
  const env = { STORYLINE_CORS_ORIGINS: pages.origin, STORYLINE_DRAIN_WINDOW_SECS: '3' };
  let server = await startStoryline({ redisUrl: redis.url, env });
  const { port, baseUrl } = server;
  const page = await openClientPage();
  // Other readers hold the draining instance open while the page's streams reopen (see the node drain test).
  const bystanders = Array.from({ length: 8 }, () => new AbortController());
  const holders = bystanders.map((c) => fetch(`${baseUrl}/v1/stories/drain-chromium/stream`, {
    headers: { Authorization: `Bearer ${mintToken()}` }, signal: c.signal,
  }).then((r) => r.body.pipeTo(new WritableStream())).catch(() => {}));
  t.after(async () => {
    bystanders.forEach((c) => c.abort());
    await Promise.all(holders);
    await page.close();
    await server.stop();
    await redis.stop();
  });
  const story = 'drain-chromium';
  await subscribeBoth(page, story, baseUrl, { token: mintToken(), lastEventId: '0' });
  const pub = startPublisher(baseUrl, story);
  await pollUntil('events before the drain', () => pub.acked.length >= 30);
  await server.stop('SIGTERM');
  const drained = pub.acked.length;
  server = await restartStoryline(port, { redisUrl: redis.url, env });
  await pollUntil('events after the new instance', () => pub.acked.length >= drained + 30);
  const acked = await pub.stop();
  await untilBothDelivered(page, acked[acked.length - 1]);
  let draining = 0;
  for (const [name] of TRANSPORTS) {
    const got = await recorded(page, name);
    const waits = got.statuses.filter((s) => s.state === 'waiting' && s.reason === 'draining');
    draining += waits.length;
    for (const w of waits) assert.ok(w.delayMs >= w.retryAfterMs && w.retryAfterMs >= 1000, `${name}: waited Retry-After`);
    summary(`drain (chromium, ${name})`, {
      acknowledged: acked.length, delivered: got.events.length, draining_503_seen: waits.length, duplicates_dropped: got.stats.duplicates,
    });
    assertExact(got, acked, name);
  }
  assert.ok(draining >= 1, 'a stream reopened while the instance drained and was told 503 draining');
});

test('chromium: a token expiring every 3 s, renewed with getToken: exact on both transports', async (t) => {
  const server = await startStoryline({ env: { STORYLINE_CORS_ORIGINS: pages.origin } });
  const page = await openClientPage();
  t.after(async () => {
    await page.close();
    await server.stop();
  });
  const story = 'expiry-chromium';
  await subscribeBoth(page, story, server.baseUrl, { tokenUrl: `/token?ttl=3&scope=read:${story}`, lastEventId: '0' });
  const pub = startPublisher(server.baseUrl, story, { pauseMs: 30 });
  const expiries = async () => (await Promise.all(TRANSPORTS.map(([n]) => recorded(page, n))))
    .map((r) => r.statuses.filter((s) => s.reason === 'token-expired').length);
  await pollUntil('three expiries on each transport', async () => (await expiries()).every((n) => n >= 3), 20_000);
  const acked = await pub.stop();
  await untilBothDelivered(page, acked[acked.length - 1]);
  for (const [name] of TRANSPORTS) {
    const got = await recorded(page, name);
    const n = got.statuses.filter((s) => s.reason === 'token-expired').length;
    summary(`token expiry (chromium, ${name})`, {
      expiries: n, token_refreshes: got.stats.tokenRefreshes, acknowledged: acked.length, delivered: got.events.length,
      duplicates_dropped: got.stats.duplicates,
    });
    assertExact(got, acked, name);
    assert.deepEqual(got.errors, [], `${name}: no error`);
  }
});

test('chromium: a gap past retention is reported with its ids, then the retained events', async (t) => {
  const server = await startStoryline({ env: { STORYLINE_CORS_ORIGINS: pages.origin, STORYLINE_RETENTION_NAMESPACES: 'gap=10' } });
  const page = await openClientPage();
  t.after(async () => {
    await page.close();
    await server.stop();
  });
  const story = 'gap:chromium';
  const early = await startPublisher(server.baseUrl, story, { pauseMs: 0 });
  await pollUntil('five events', () => early.acked.length >= 5);
  const seen = await early.stop();
  const stoppedAt = seen[2];
  const more = startPublisher(server.baseUrl, story, { pauseMs: 0 });
  await pollUntil('more than the retention', () => more.acked.length >= 40);
  await more.stop();
  const retained = (await history(server.baseUrl, story)).map((e) => e.id);
  assert.ok(!retained.includes(stoppedAt), 'the resume point was trimmed');
  await subscribeBoth(page, story, server.baseUrl, { token: mintToken(), lastEventId: stoppedAt });
  await untilBothDelivered(page, retained[retained.length - 1]);
  for (const [name] of TRANSPORTS) {
    const got = await recorded(page, name);
    summary(`gap (chromium, ${name})`, {
      gaps: got.gaps.length, requested: got.gaps[0]?.requested, resumed_from: got.gaps[0]?.resumedFrom, delivered: got.events.length,
    });
    assert.deepEqual(got.gaps, [{ story, requested: stoppedAt, resumedFrom: retained[0] }], `${name}: one gap naming both ends`);
    assertExact(got, retained, name);
  }
});
