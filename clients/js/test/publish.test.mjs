// publish() against the real binary, with a small HTTP proxy in front that the test scripts: it can forward a POST
// and then answer 503 `unconfirmed` (the event WAS stored), cut the connection after forwarding, or refuse with a
// 503 without forwarding. Every retry must carry the same Idempotency-Key, so the story holds the event once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { once } from 'node:events';
import { publish, ProblemError, NetworkError } from '../src/storyline.js';
import { startStoryline, mintToken, history, summary } from './helpers.mjs';

/** A proxy to `upstream` that treats the n-th request as `script[n]` ('pass' once the script runs out). */
async function scriptedProxy(upstream, script) {
  const seen = [];
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const step = script[seen.length] ?? 'pass';
    seen.push({ key: req.headers['idempotency-key'], at: Date.now(), step });
    const refuse = (problem) => {
      res.writeHead(503, { 'Content-Type': 'application/problem+json', 'Retry-After': '1' });
      res.end(JSON.stringify({ type: `urn:storyline:problem:${problem}`, title: 'scripted', status: 503, detail: 'scripted by the test' }));
    };
    if (step === 'refuse') return refuse('unavailable');
    const headers = { ...req.headers };
    delete headers.host;
    const answer = await fetch(upstream + req.url, { method: req.method, headers, body: Buffer.concat(chunks) });
    const body = Buffer.from(await answer.arrayBuffer());
    if (step === 'unconfirmed') return refuse('unconfirmed');
    if (step === 'cut') return req.socket.destroy();
    res.writeHead(answer.status, { 'Content-Type': answer.headers.get('content-type') ?? 'application/json' });
    res.end(body);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    seen,
    close: () => new Promise((r) => server.close(r)),
  };
}

test('publish: 503 unconfirmed (stored) and a cut connection are retried with one key; the event is stored once', async (t) => {
  const server = await startStoryline();
  t.after(() => server.stop());
  const proxy = await scriptedProxy(server.baseUrl, ['unconfirmed', 'cut']);
  t.after(() => proxy.close());
  const story = 'publish-retry';
  const retries = [];
  const receipt = await publish(story, { type: 'chapter', data: { text: 'once' } }, {
    baseUrl: proxy.url, token: mintToken(), backoff: { baseMs: 50, capMs: 200 }, onRetry: (r) => retries.push(r),
  });
  const stored = await history(server.baseUrl, story);
  const keys = new Set(proxy.seen.map((s) => s.key));
  summary('publish retry', { attempts: receipt.attempts, requests: proxy.seen.length, distinct_keys: keys.size, stored: stored.length });
  assert.equal(proxy.seen.length, 3, 'three requests: unconfirmed, cut, answered');
  assert.equal(keys.size, 1, 'every attempt sent the same Idempotency-Key');
  assert.equal([...keys][0], receipt.idempotencyKey, 'the generated key is reported');
  assert.equal(receipt.attempts, 3);
  assert.equal(receipt.duplicate, true, 'the server recognised the key: the first attempt had stored it');
  assert.deepEqual(stored.map((e) => e.id), [receipt.id], 'the story holds the event once, with the receipt id');
  assert.ok(proxy.seen[1].at - proxy.seen[0].at >= 1000, 'waited Retry-After (1 s) after the 503');
  assert.ok(retries[0].error instanceof ProblemError && retries[0].error.problemType === 'unconfirmed');
  assert.ok(retries[1].error instanceof NetworkError, 'the cut connection is a NetworkError');
});

test('publish: a given Idempotency-Key is used as is, and gives up after maxAttempts with the problem', async (t) => {
  const server = await startStoryline();
  t.after(() => server.stop());
  const proxy = await scriptedProxy(server.baseUrl, ['refuse', 'refuse', 'refuse', 'refuse']);
  t.after(() => proxy.close());
  const error = await publish('publish-giveup', { type: 'chapter', data: 1 }, {
    baseUrl: proxy.url, token: mintToken(), idempotencyKey: 'mine-1', maxAttempts: 2, random: () => 0,
  }).catch((e) => e);
  assert.ok(error instanceof ProblemError, 'a ProblemError');
  assert.equal(error.status, 503);
  assert.equal(error.problemType, 'unavailable');
  assert.equal(error.retryAfterMs, 1000);
  assert.deepEqual(proxy.seen.map((s) => s.key), ['mine-1', 'mine-1'], 'two attempts, the given key each time');
  assert.deepEqual(await history(server.baseUrl, 'publish-giveup'), [], 'nothing stored');
});

test('publish: 429 rate-limited from the real server is waited out (Retry-After) and succeeds', async (t) => {
  const server = await startStoryline({ env: { STORYLINE_PUBLISH_RATE_MEMBER: '1' } });
  t.after(() => server.stop());
  const token = mintToken({ tier: 'member' });
  const story = 'publish-429';
  const retries = [];
  const receipts = [];
  for (let i = 0; i < 3; i++) {
    receipts.push(await publish(story, { type: 'chapter', data: { i } }, { baseUrl: server.baseUrl, token, onRetry: (r) => retries.push(r) }));
  }
  const stored = await history(server.baseUrl, story);
  summary('publish 429', { published: receipts.length, retries: retries.length, stored: stored.length });
  assert.deepEqual(stored.map((e) => e.id), receipts.map((r) => r.id), 'each event stored once, in order');
  assert.ok(retries.length >= 1, 'the member rate (1/s) was hit');
  assert.ok(retries.every((r) => r.error.status === 429 && r.error.problemType === 'rate-limited' && r.delayMs >= r.error.retryAfterMs));
});

test('publish: a key reused for a different event is 422 idempotency-key-mismatch, not retried, and stores nothing', async (t) => {
  const server = await startStoryline();
  t.after(() => server.stop());
  const story = 'publish-key-reused';
  const options = { baseUrl: server.baseUrl, token: mintToken(), idempotencyKey: 'reused-1' };
  const first = await publish(story, { type: 'chapter', data: { text: 'one' } }, options);
  const retries = [];
  const error = await publish(story, { type: 'chapter', data: { text: 'two' } }, { ...options, onRetry: (r) => retries.push(r) })
    .catch((e) => e);
  const again = await publish(story, { type: 'chapter', data: { text: 'one' } }, options);
  assert.ok(error instanceof ProblemError, 'a ProblemError');
  assert.equal(error.status, 422);
  assert.equal(error.problemType, 'idempotency-key-mismatch');
  assert.equal(retries.length, 0, 'a permanent error: not retried');
  assert.equal(again.duplicate, true, 'the same event with the key is still answered with the first receipt');
  assert.equal(again.id, first.id);
  assert.deepEqual((await history(server.baseUrl, story)).map((e) => e.id), [first.id], 'the refused event was not stored');
});

test('publish: a client fault is not retried and carries the problem+json', async (t) => {
  const server = await startStoryline();
  t.after(() => server.stop());
  const cases = [
    ['reserved event type', { type: 'gap', data: 1 }, mintToken(), 422, 'invalid-event'],
    ['no write scope', { type: 'chapter', data: 1 }, mintToken({ scope: 'read:*' }), 403, 'forbidden'],
    ['bad token', { type: 'chapter', data: 1 }, 'not-a-jwt', 401, 'unauthenticated'],
  ];
  for (const [name, event, token, status, type] of cases) {
    const retries = [];
    const error = await publish('publish-faults', event, { baseUrl: server.baseUrl, token, onRetry: (r) => retries.push(r) }).catch((e) => e);
    assert.ok(error instanceof ProblemError, `${name}: a ProblemError`);
    assert.equal(error.status, status, name);
    assert.equal(error.problemType, type, name);
    assert.equal(error.problem.status, status, `${name}: the problem body`);
    assert.ok(error.problem.detail.length > 0, `${name}: the detail`);
    assert.equal(retries.length, 0, `${name}: not retried`);
  }
});
