// subscribe() against the real storyline binary and a real redis-server: what the app receives across a kill -9
// and restart, a drain and a new instance, tokens expiring every few seconds, and a gap past retention. Every case
// compares the delivered ids with the ids the publisher had acknowledged (or the retained history), exactly.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { subscribe } from '../src/storyline.js';
import {
  startRedis, startStoryline, restartStoryline, startPublisher, recorder, pollUntil, mintToken, history, summary,
} from './helpers.mjs';

const FAST = { baseMs: 100, capMs: 1000 };

function assertNoDuplicates(ids, what) {
  assert.equal(new Set(ids).size, ids.length, `${what}: no id delivered twice`);
}

async function untilDelivered(rec, acked, story) {
  const last = acked[acked.length - 1];
  await pollUntil(`the last acknowledged event ${last} delivered`, () => rec.ids(story).includes(last), 20_000);
}

test('kill -9 and restart mid-stream (Redis): every acknowledged event exactly once, in order', async (t) => {
  const redis = await startRedis();
  let server = await startStoryline({ redisUrl: redis.url });
  const { port, baseUrl } = server;
  t.after(async () => {
    await server.stop();
    await redis.stop();
  });
  const story = 'restart-node';
  const rec = recorder();
  const sub = subscribe(story, { baseUrl, token: mintToken(), lastEventId: '0', backoff: FAST, ...rec });
  t.after(() => sub.close());
  await pollUntil('the stream open', () => rec.statuses.some((s) => s.state === 'open'));
  const pub = startPublisher(baseUrl, story);
  const kills = 2;
  for (let k = 0; k < kills; k++) {
    const before = pub.acked.length;
    await pollUntil('events acknowledged before the kill', () => pub.acked.length >= before + 40);
    await server.stop('SIGKILL');
    server = await restartStoryline(port, { redisUrl: redis.url });
  }
  const afterRestart = pub.acked.length;
  await pollUntil('events acknowledged after the last restart', () => pub.acked.length >= afterRestart + 40);
  const acked = await pub.stop();
  await untilDelivered(rec, acked, story);

  const ids = rec.ids(story);
  summary('restart (node, redis)', {
    kills, acknowledged: acked.length, delivered: ids.length, duplicates_dropped: sub.stats.duplicates,
    connections: sub.stats.connections, lost: acked.filter((id) => !ids.includes(id)).length,
  });
  assertNoDuplicates(ids, 'restart');
  assert.deepEqual(ids, acked, 'the app got exactly the acknowledged events, in order');
  assert.ok(sub.stats.connections >= kills + 1, 'the client reconnected after each kill');
  const waits = rec.statuses.filter((s) => s.state === 'waiting');
  assert.ok(waits.every((w) => w.delayMs >= 0 && w.delayMs < FAST.capMs), 'network backoff within the cap');
});

test('drain (SIGTERM): 503 draining on reopen, Retry-After honoured, then a new instance: exact', async (t) => {
  const redis = await startRedis();
  const env = { STORYLINE_DRAIN_WINDOW_SECS: '3' };
  let server = await startStoryline({ redisUrl: redis.url, env });
  const { port, baseUrl } = server;
  t.after(async () => {
    await server.stop();
    await redis.stop();
  });
  const story = 'drain-node';
  // Ten readers: the drain ends their streams at random moments over the window, so the first to reopen meets
  // the still-draining instance (503 draining) while the others hold it open.
  const readers = Array.from({ length: 10 }, () => {
    const rec = recorder();
    const sub = subscribe(story, { baseUrl, token: mintToken(), lastEventId: '0', backoff: FAST, ...rec });
    t.after(() => sub.close());
    return { rec, sub };
  });
  await pollUntil('every stream open', () => readers.every((r) => r.rec.statuses.some((s) => s.state === 'open')));
  const pub = startPublisher(baseUrl, story);
  await pollUntil('events before the drain', () => pub.acked.length >= 30);
  await server.stop('SIGTERM');
  const drainedAt = pub.acked.length;
  server = await restartStoryline(port, { redisUrl: redis.url, env });
  await pollUntil('events after the new instance', () => pub.acked.length >= drainedAt + 30);
  const acked = await pub.stop();

  let draining = 0;
  for (const [i, { rec, sub }] of readers.entries()) {
    await untilDelivered(rec, acked, story);
    const ids = rec.ids(story);
    assertNoDuplicates(ids, `reader ${i}`);
    assert.deepEqual(ids, acked, `reader ${i}: exactly the acknowledged events, in order`);
    const statuses = rec.statuses;
    statuses.forEach((s, j) => {
      if (s.state !== 'waiting' || s.reason !== 'draining') return;
      draining += 1;
      assert.ok(s.delayMs >= s.error.retryAfterMs && s.error.retryAfterMs >= 1000, `reader ${i}: waits at least Retry-After`);
      const next = statuses.slice(j + 1).find((n) => n.state === 'connecting');
      assert.ok(next && next.at - s.at >= s.error.retryAfterMs - 20, `reader ${i}: reconnected no earlier than Retry-After`);
    });
    assert.equal(sub.stats.duplicates, 0, `reader ${i}: the resume was exact, nothing to drop`);
  }
  summary('drain (node, redis)', {
    readers: readers.length, acknowledged: acked.length,
    delivered_each: readers.map((r) => r.rec.events.length).join('/'), draining_503_seen: draining,
  });
  assert.ok(draining >= 1, 'a reader reopened while the instance drained and was told 503 draining');
});

test('a token that expires every 3 s, renewed through getToken: exact over several expiries', async (t) => {
  const server = await startStoryline();
  t.after(() => server.stop());
  const { baseUrl } = server;
  const story = 'expiry-node';
  const rec = recorder();
  let minted = 0;
  const sub = subscribe(story, {
    baseUrl,
    getToken: async () => {
      minted += 1;
      return mintToken({ scope: `read:${story}`, ttlSecs: 3 });
    },
    lastEventId: '0',
    backoff: FAST,
    ...rec,
  });
  t.after(() => sub.close());
  await pollUntil('the stream open', () => rec.statuses.some((s) => s.state === 'open'));
  const pub = startPublisher(baseUrl, story, { pauseMs: 30 });
  await pollUntil('three token expiries', () => rec.statuses.filter((s) => s.reason === 'token-expired').length >= 3, 20_000);
  const acked = await pub.stop();
  await untilDelivered(rec, acked, story);

  const ids = rec.ids(story);
  const expiries = rec.statuses.filter((s) => s.reason === 'token-expired').length;
  summary('token expiry (node, memory)', {
    expiries, tokens_minted: minted, acknowledged: acked.length, delivered: ids.length, duplicates_dropped: sub.stats.duplicates,
  });
  assertNoDuplicates(ids, 'expiry');
  assert.deepEqual(ids, acked, 'exactly the acknowledged events across every expiry');
  assert.ok(minted >= expiries + 1, 'a new token for each expiry');
  assert.deepEqual(rec.errors, [], 'no error reached the app');
});

for (const broker of ['memory', 'redis']) {
  test(`a gap past retention (${broker}): onGap with the right ids, then the retained events, no duplicates`, async (t) => {
    const redis = broker === 'redis' ? await startRedis() : null;
    const server = await startStoryline({ redisUrl: redis?.url, env: { STORYLINE_RETENTION_NAMESPACES: 'gap=10' } });
    t.after(async () => {
      await server.stop();
      await redis?.stop();
    });
    const { baseUrl } = server;
    const story = `gap:${broker}`;
    const first = recorder();
    const reader = subscribe(story, { baseUrl, token: mintToken(), lastEventId: '0', backoff: FAST, ...first });
    const before = startPublisher(baseUrl, story, { pauseMs: 0 });
    await pollUntil('five events read', () => first.events.length >= 5);
    reader.close();
    await before.stop();
    const stoppedAt = reader.lastEventId;
    const seen = first.ids();
    assert.equal(stoppedAt, seen[seen.length - 1], 'lastEventId is the last delivered id');

    const more = startPublisher(baseUrl, story, { pauseMs: 0 });
    await pollUntil('more than the retention published while the reader is away', () => more.acked.length >= 40);
    await more.stop();
    const retained = (await history(baseUrl, story)).map((e) => e.id);
    assert.ok(!retained.includes(stoppedAt) && retained.length >= 10, 'the resume point was trimmed');

    const second = recorder();
    const resumed = subscribe(story, { baseUrl, token: mintToken(), lastEventId: stoppedAt, backoff: FAST, ...second });
    t.after(() => resumed.close());
    await pollUntil('the retained events delivered', () => second.ids().includes(retained[retained.length - 1]));
    const ids = second.ids();
    summary(`gap (node, ${broker})`, {
      read_before: seen.length, published_while_away: more.acked.length, retained: retained.length,
      gaps: second.gaps.length, requested: second.gaps[0]?.requested, resumed_from: second.gaps[0]?.resumedFrom,
      delivered_after: ids.length, duplicates_dropped: resumed.stats.duplicates,
    });
    assert.deepEqual(second.gaps, [{ story, requested: stoppedAt, resumedFrom: retained[0] }], 'one gap, naming both ends');
    assertNoDuplicates(ids, 'gap');
    assert.deepEqual(ids, retained, 'after the gap: every retained event, in order');
    assert.ok(ids.every((id) => !seen.includes(id)), 'nothing the reader had already seen');
  });
}

test('several stories on one connection (Redis): composite resume, a gap on one story only, kill -9: exact per story', async (t) => {
  const redis = await startRedis();
  const env = { STORYLINE_RETENTION_NAMESPACES: 'gap=10' };
  let server = await startStoryline({ redisUrl: redis.url, env });
  const { port, baseUrl } = server;
  t.after(async () => {
    await server.stop();
    await redis.stop();
  });
  const stories = ['multi-a', 'gap:multi', 'multi-b'];
  const first = recorder();
  const reader = subscribe(stories, { baseUrl, token: mintToken(), lastEventId: '0,0,0', backoff: FAST, ...first });
  const early = stories.map((s) => startPublisher(baseUrl, s, { pauseMs: 10 }));
  await pollUntil('events on every story', () => stories.every((s) => first.ids(s).length >= 3));
  const earlyAcked = await Promise.all(early.map((p) => p.stop()));
  for (const [i, s] of stories.entries()) await untilDelivered(first, earlyAcked[i], s);
  reader.close();
  const cursor = reader.lastEventId;
  assert.deepEqual(cursor.split(','), stories.map((s) => first.ids(s).at(-1)), 'the composite cursor: each story\'s last delivered id');

  const away = startPublisher(baseUrl, 'gap:multi', { pauseMs: 0 });
  await pollUntil('more than the retention on gap:multi', () => away.acked.length >= 40);
  await away.stop();
  const retained = (await history(baseUrl, 'gap:multi')).map((e) => e.id);

  const rec = recorder();
  const sub = subscribe(stories, { baseUrl, token: mintToken(), lastEventId: cursor, backoff: FAST, ...rec });
  t.after(() => sub.close());
  const live = ['multi-a', 'multi-b'].map((s) => startPublisher(baseUrl, s));
  await pollUntil('live events before the kill', () => live.every((p) => p.acked.length >= 20));
  await server.stop('SIGKILL');
  server = await restartStoryline(port, { redisUrl: redis.url, env });
  const marks = live.map((p) => p.acked.length);
  await pollUntil('live events after the restart', () => live.every((p, i) => p.acked.length >= marks[i] + 20));
  const [ackedA, ackedB] = await Promise.all(live.map((p) => p.stop()));
  await untilDelivered(rec, ackedA, 'multi-a');
  await untilDelivered(rec, ackedB, 'multi-b');
  await pollUntil('gap:multi retained events', () => rec.ids('gap:multi').length >= retained.length);

  summary('several stories (node, redis)', {
    stories: stories.length, 'multi-a': `${rec.ids('multi-a').length}/${ackedA.length}`, 'multi-b': `${rec.ids('multi-b').length}/${ackedB.length}`,
    'gap:multi': `${rec.ids('gap:multi').length}/${retained.length}`, gaps: rec.gaps.length, duplicates_dropped: sub.stats.duplicates,
    connections: sub.stats.connections,
  });
  assert.deepEqual(rec.ids('multi-a'), ackedA, 'multi-a: exactly the acknowledged events after the cursor');
  assert.deepEqual(rec.ids('multi-b'), ackedB, 'multi-b: exactly the acknowledged events after the cursor');
  assert.deepEqual(rec.ids('gap:multi'), retained, 'gap:multi: the retained events');
  assert.deepEqual(rec.gaps, [{ story: 'gap:multi', requested: cursor.split(',')[1], resumedFrom: retained[0] }], 'one gap, for that story only');
  for (const s of stories) assertNoDuplicates(rec.ids(s), s);
});

test('a reader with no cursor that loses its stream before any event resumes from where it started (Redis)', async (t) => {
  const redis = await startRedis();
  let server = await startStoryline({ redisUrl: redis.url });
  const { port, baseUrl } = server;
  t.after(async () => {
    await server.stop();
    await redis.stop();
  });
  const story = 'no-cursor';
  const old = startPublisher(baseUrl, story, { pauseMs: 0 });
  await pollUntil('history before the reader', () => old.acked.length >= 5);
  const before = await old.stop();
  const rec = recorder();
  const sub = subscribe(story, { baseUrl, token: mintToken(), backoff: { baseMs: 500, capMs: 1000 }, ...rec });
  t.after(() => sub.close());
  // The first (id-only) frame names the newest event at open: the reader knows where it started.
  await pollUntil('the start cursor', () => sub.lastEventId === before.at(-1));
  await server.stop('SIGKILL');
  server = await restartStoryline(port, { redisUrl: redis.url });
  // Published as soon as the new instance listens, while the reader is most likely still backing off.
  const pub = startPublisher(baseUrl, story, { pauseMs: 0 });
  await pollUntil('events after the restart', () => pub.acked.length >= 10);
  const acked = await pub.stop();
  await untilDelivered(rec, acked, story);
  summary('no cursor, restart before any event (node, redis)', {
    before_open: before.length, acknowledged_after: acked.length, delivered: rec.events.length, connections: sub.stats.connections,
  });
  assert.deepEqual(rec.ids(story), acked, 'every event after the open, none from before');
});
