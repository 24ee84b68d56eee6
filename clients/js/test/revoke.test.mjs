// A revoked token is final (against the real storyline binary): a `token-revoked` frame closes a subscription that
// has no getToken, and its token is never sent again; with getToken, the client asks it once for a different token
// and goes on, and closes when that one is revoked too (a revoked sub).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { subscribe } from '../src/storyline.js';
import { startStoryline, recorder, pollUntil, mintToken, summary } from './helpers.mjs';

const FAST = { baseMs: 100, capMs: 1000 };

function claims(token) {
  return JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString());
}

async function revoke(baseUrl, entry) {
  const res = await fetch(`${baseUrl}/v1/admin/revocations`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${mintToken({ sub: 'ops', tier: 'admin' })}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ ...entry, until: Math.floor(Date.now() / 1000) + 600 }),
  });
  assert.equal(res.status, 201, `revoke ${JSON.stringify(entry)}: ${await res.text()}`);
}

async function post(baseUrl, story, n) {
  const res = await fetch(`${baseUrl}/v1/stories/${story}/events`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${mintToken()}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ type: 'step', data: { n } }),
  });
  assert.equal(res.status, 201);
  return (await res.json()).id;
}

/** The audit lines of requests refused because their token was revoked. */
function revokedRequests(server) {
  return server.logs.filter((line) => line.includes('"auth_failure"') && line.includes('"revoked"')).length;
}

test('without getToken, a token-revoked frame closes the subscription and the token is never sent again', async (t) => {
  const server = await startStoryline({ env: { STORYLINE_HEARTBEAT_SECS: '1' } });
  t.after(() => server.stop());
  const { baseUrl } = server;
  const story = 'revoked-static';
  const token = mintToken({ sub: 'reader-a', scope: `read:${story}`, tier: 'member' });
  const rec = recorder();
  const sub = subscribe(story, { baseUrl, token, lastEventId: '0', backoff: FAST, ...rec });
  t.after(() => sub.close());
  await pollUntil('the stream open', () => rec.statuses.some((s) => s.state === 'open'));
  const id = await post(baseUrl, story, 1);
  await pollUntil('the event delivered', () => rec.ids(story).includes(id));

  await revoke(baseUrl, { jti: claims(token).jti });
  await pollUntil('the subscription closed with token-revoked', () => rec.errors.length === 1);
  assert.equal(rec.errors[0].problemType, 'token-revoked');
  assert.equal(rec.errors[0].status, 401);
  assert.equal(rec.statuses.at(-1).state, 'closed');
  assert.equal(sub.stats.connections, 1, 'no reconnect');
  assert.equal(revokedRequests(server), 0, 'the revoked token was never sent again');
});

test('with getToken, a revoked jti is replaced once and the stream goes on; a revoked sub closes it', async (t) => {
  const server = await startStoryline({ env: { STORYLINE_HEARTBEAT_SECS: '1' } });
  t.after(() => server.stop());
  const { baseUrl } = server;
  const story = 'revoked-refresh';
  const minted = [];
  const rec = recorder();
  const sub = subscribe(story, {
    baseUrl,
    getToken: async () => {
      minted.push(mintToken({ sub: 'reader-b', scope: `read:${story}`, tier: 'member' }));
      return minted.at(-1);
    },
    lastEventId: '0',
    backoff: FAST,
    ...rec,
  });
  t.after(() => sub.close());
  await pollUntil('the stream open', () => rec.statuses.some((s) => s.state === 'open'));
  const first = await post(baseUrl, story, 1);
  await pollUntil('the first event', () => rec.ids(story).includes(first));

  await revoke(baseUrl, { jti: claims(minted.at(-1)).jti });
  await pollUntil('reopened with a new token', () => rec.statuses.filter((s) => s.state === 'open').length === 2);
  const second = await post(baseUrl, story, 2);
  await pollUntil('the second event', () => rec.ids(story).includes(second));
  assert.equal(minted.length, 2, 'getToken was asked once for the revoked token');
  assert.ok(rec.statuses.some((s) => s.reason === 'token-revoked'));

  await revoke(baseUrl, { sub: 'reader-b' });
  await pollUntil('the subscription closed', () => rec.errors.length === 1);
  summary('revocation (node, memory)', { tokens_minted: minted.length, connections: sub.stats.connections });
  assert.equal(rec.errors[0].problemType, 'token-revoked');
  assert.equal(minted.length, 3, 'one more token was tried, and refused');
  assert.equal(revokedRequests(server), 1, 'only that new token was refused; no revoked token was resent');
  assert.deepEqual(rec.ids(story), [first, second], 'every event once');
});
