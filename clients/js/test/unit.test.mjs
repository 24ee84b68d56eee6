// The pure parts: the SSE parser against the WHATWG event-stream rules, the delay functions' bounds, id order.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SseParser, backoffDelay, retryAfterDelay, parseRetryAfter, compareIds } from '../src/storyline.js';

function parse(chunks) {
  const out = [];
  const parser = new SseParser({
    onEvent: (e) => out.push(['event', e.type, e.data, e.lastEventId]),
    onId: (id) => out.push(['id', id]),
    onRetry: (ms) => out.push(['retry', ms]),
    onComment: (c) => out.push(['comment', c]),
  });
  for (const c of chunks) parser.push(c);
  parser.end();
  return out;
}

test('sse: an event frame gives its type, data and id', () => {
  assert.deepEqual(parse(['id: 1-0\nevent: chapter\ndata: {"a":1}\n\n']), [['event', 'chapter', '{"a":1}', '1-0']]);
});

test('sse: a frame without event is a message; data lines join with LF; the trailing LF is dropped', () => {
  assert.deepEqual(parse(['data: a\ndata:b\ndata\n\n']), [['event', 'message', 'a\nb\n', '']]);
});

test('sse: CRLF, CR and LF all end lines, a CR at a chunk end and the LF after it are one line end', () => {
  const cases = [
    ['CRLF', ['id: 1-0\r\ndata: x\r\n\r\n']],
    ['CR', ['id: 1-0\rdata: x\r\r']],
    ['CR | LF split', ['id: 1-0\r', '\ndata: x\r', '\n\r', '\n']],
    ['one byte at a time', [...'id: 1-0\r\ndata: x\r\n\r\n']],
  ];
  for (const [name, chunks] of cases) {
    assert.deepEqual(parse(chunks), [['event', 'message', 'x', '1-0']], name);
  }
});

test('sse: an id-only frame sets the last event id and dispatches nothing', () => {
  assert.deepEqual(parse(['retry: 2000\n\nid: 5-0,0,7-1\n\ndata: x\n\n']), [
    ['retry', 2000],
    ['id', '5-0,0,7-1'],
    ['event', 'message', 'x', '5-0,0,7-1'],
  ]);
});

test('sse: the last event id persists across frames, and an empty id resets it', () => {
  assert.deepEqual(parse(['id: 3-0\ndata: a\n\ndata: b\n\nid\ndata: c\n\n']), [
    ['event', 'message', 'a', '3-0'],
    ['event', 'message', 'b', '3-0'],
    ['event', 'message', 'c', ''],
  ]);
});

test('sse: an id containing NUL is ignored', () => {
  assert.deepEqual(parse(['id: 1-0\n\nid: 2\u00000\ndata: x\n\n']), [['id', '1-0'], ['event', 'message', 'x', '1-0']]);
});

test('sse: comments are reported, retry needs digits only, unknown fields are ignored', () => {
  assert.deepEqual(parse([': keep-alive\n\nretry: 12x\nretry: 300\nfoo: bar\ndata: y\n\n']), [
    ['comment', 'keep-alive'],
    ['retry', 300],
    ['event', 'message', 'y', ''],
  ]);
});

test('sse: only one leading space is stripped from a value; a leading BOM is skipped', () => {
  assert.deepEqual(parse(['\uFEFFdata:  two\n\n']), [['event', 'message', ' two', '']]);
});

test('sse: an incomplete frame at the end of the stream is discarded', () => {
  assert.deepEqual(parse(['data: whole\n\ndata: cut']), [['event', 'message', 'whole', '']]);
});

test('sse: an event type is reset after each dispatch, also after a frame without data', () => {
  assert.deepEqual(parse(['event: gap\n\ndata: z\n\n']), [['event', 'message', 'z', '']]);
});

test('backoff: full jitter between 0 and min(cap, base * 2^attempt)', () => {
  const b = { baseMs: 100, capMs: 1000 };
  for (const [attempt, ceiling] of [[0, 100], [1, 200], [3, 800], [4, 1000], [50, 1000]]) {
    assert.equal(backoffDelay(attempt, b, () => 0), 0, `attempt ${attempt}, random 0`);
    const top = backoffDelay(attempt, b, () => 0.999999);
    assert.ok(top < ceiling && top >= ceiling - 1, `attempt ${attempt}: ${top} just under ${ceiling}`);
  }
  const draws = Array.from({ length: 2000 }, () => backoffDelay(5, b));
  assert.ok(draws.every((d) => d >= 0 && d < 1000), 'every draw within [0, cap)');
  assert.ok(new Set(draws).size > 500, 'the delays are spread, not a fixed interval');
  const mean = draws.reduce((a, b2) => a + b2, 0) / draws.length;
  assert.ok(mean > 400 && mean < 600, `mean ${mean} near half the cap`);
});

test('retry-after: never earlier than asked, spread over one more Retry-After', () => {
  assert.equal(retryAfterDelay(2000, () => 0), 2000);
  assert.equal(retryAfterDelay(2000, () => 0.999999), 3999);
  const draws = Array.from({ length: 1000 }, () => retryAfterDelay(1000));
  assert.ok(draws.every((d) => d >= 1000 && d < 2000), 'within [ra, 2 ra)');
  assert.ok(new Set(draws).size > 300, 'spread');
});

test('retry-after: delay-seconds, an HTTP-date, and nonsense', () => {
  assert.equal(parseRetryAfter('2'), 2000);
  assert.equal(parseRetryAfter(' 0 '), 0);
  const now = Date.parse('Fri, 04 Dec 2026 01:00:00 GMT');
  assert.equal(parseRetryAfter('Fri, 04 Dec 2026 01:00:05 GMT', now), 5000);
  assert.equal(parseRetryAfter('Fri, 04 Dec 2026 00:59:00 GMT', now), 0);
  assert.equal(parseRetryAfter('soon'), null);
  assert.equal(parseRetryAfter('-1'), null);
  assert.equal(parseRetryAfter(null), null);
});

test('ids: ordered by milliseconds then sequence, as numbers of any length', () => {
  const cases = [
    ['1-0', '1-0', 0],
    ['1-1', '1-0', 1],
    ['9-0', '10-0', -1],
    ['1733270400000-9', '1733270400000-10', -1],
    ['0', '1-0', -1],
    ['18446744073709551615-0', '18446744073709551614-99', 1],
  ];
  for (const [a, b, sign] of cases) assert.equal(Math.sign(compareIds(a, b)), sign, `${a} vs ${b}`);
});
