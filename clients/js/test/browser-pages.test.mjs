// Pages in real headless Chromium against the real binary: the reader page storyline serves at /reader (events
// posted with curl shown in order, a screenshot, a reconnect after a restart, posting from the page), twenty
// stories over one HTTP/1.1 connection with the multi-story endpoint across a restart, and the README's browser
// example run exactly as written.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, stat, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { publish } from '../src/storyline.js';
import {
  startRedis, startStoryline, restartStoryline, startPublisher, pollUntil, mintToken, summary, repoRoot,
} from './helpers.mjs';
import { launchChromium, clientPageServer, staticServer, clientDir } from './browser.mjs';

let browser;
let shots;
before(async () => {
  browser = await launchChromium();
  shots = await mkdtemp(path.join(tmpdir(), 'storyline-shots-'));
});
after(async () => {
  await browser?.close();
  if (shots && !process.env.KEEP_SCREENSHOTS) await rm(shots, { recursive: true, force: true });
});

const listed = (page) => page.$$eval('#events li', (items) => items.map((li) => li.dataset.id));

// The README's first POST: curl, with a writer token; returns the receipt's id.
async function postWithCurl(baseUrl, story, n, from = 0) {
  const ids = [];
  for (let i = 0; i < n; i++) {
    const { stdout } = await promisify(execFile)('curl', [
      '-sS', '--fail-with-body', '-X', 'POST', `${baseUrl}/v1/stories/${story}/events`,
      '-H', `Authorization: Bearer ${mintToken()}`, '-H', 'Content-Type: application/json',
      '-d', JSON.stringify({ type: 'chapter', data: { n: from + i } }),
    ]);
    ids.push(JSON.parse(stdout).id);
  }
  return ids;
}

test('reader page: events posted with curl appear in order, survive a restart (Redis), and the page posts', async (t) => {
  const redis = await startRedis();
  let server = await startStoryline({ redisUrl: redis.url });
  const { port, baseUrl } = server;
  const page = await browser.page();
  const violations = [];
  page.on('console', (m) => {
    if (/Content Security Policy|Refused to/i.test(m.text())) violations.push(m.text());
  });
  t.after(async () => {
    await page.close();
    await server.stop();
    await redis.stop();
  });
  const story = 'reader-demo';
  const token = mintToken();
  await page.goto(`${baseUrl}/reader#story=${encodeURIComponent(story)}&token=${encodeURIComponent(token)}`);
  await page.waitForSelector('#status[data-state="open"]');
  assert.equal(new URL(page.url()).hash, '', 'the token is taken out of the address bar');

  const first = await postWithCurl(baseUrl, story, 10);
  await pollUntil('ten events listed', async () => (await listed(page)).length === 10);
  const shot = path.join(shots, 'reader.png');
  await page.screenshot({ path: shot, fullPage: true });
  const png = await readFile(shot);
  assert.deepEqual([...png.subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47], 'a PNG screenshot');
  assert.ok((await stat(shot)).size > 5000, 'the screenshot has content');
  assert.deepEqual(await listed(page), first, 'the page lists the posted events, in order');
  assert.equal(await page.textContent('#count'), '10');

  await server.stop('SIGKILL');
  await page.waitForSelector('#status[data-state="waiting"]');
  server = await restartStoryline(port, { redisUrl: redis.url });
  await page.waitForSelector('#status[data-state="open"]', { timeout: 15_000 });
  const second = await postWithCurl(baseUrl, story, 10, 10);
  await pollUntil('twenty events listed', async () => (await listed(page)).length >= 20);

  await page.fill('#type', 'note');
  await page.fill('#data', '{"text": "from the page"}');
  await page.click('#send');
  await page.waitForSelector('#posted:not(:empty)');
  const posted = (await page.textContent('#posted')).replace(/^posted /, '');
  await pollUntil('the posted event listed', async () => (await listed(page)).includes(posted));
  await page.screenshot({ path: path.join(shots, 'reader-after-restart.png'), fullPage: true });

  const ids = await listed(page);
  summary('reader page (chromium, redis)', { before_restart: first.length, after_restart: second.length + 1, listed: ids.length, screenshots: process.env.KEEP_SCREENSHOTS ? shots : '2 (KEEP_SCREENSHOTS=1 keeps them)' });
  assert.deepEqual(ids, [...first, ...second, posted], 'every event once, in order, across the restart');
  assert.match(await page.textContent('#events li:last-child'), /note \{"text":"from the page"\}/);
  assert.deepEqual(violations, [], 'nothing blocked by the page CSP');
});

test('chromium: 20 stories over one HTTP/1.1 connection (multi-story endpoint), restart mid-way: every story exact', async (t) => {
  const pages = await clientPageServer();
  const redis = await startRedis();
  const env = { STORYLINE_CORS_ORIGINS: pages.origin };
  let server = await startStoryline({ redisUrl: redis.url, env });
  const { port, baseUrl } = server;
  const page = await browser.page();
  const streamRequests = [];
  page.on('request', (r) => {
    if (r.url().startsWith(baseUrl)) streamRequests.push(r.url());
  });
  t.after(async () => {
    await page.close();
    await server.stop();
    await redis.stop();
    await pages.close();
  });
  await page.goto(pages.origin + '/');
  await page.waitForFunction(() => window.ready === true);
  const stories = Array.from({ length: 20 }, (_, i) => `multi-${i}`);
  await page.evaluate(([s, o]) => window.record('multi', s, o), [stories, { baseUrl, token: mintToken(), backoff: { baseMs: 100, capMs: 1000 } }]);
  // Without a cursor the stream starts at each story's newest event; its first id-only frame names them all.
  await pollUntil('the start cursor', () => page.evaluate(() => window.subs.multi.sub.lastEventId !== null));

  const publishers = stories.map((s) => startPublisher(baseUrl, s, { pauseMs: 150 }));
  await pollUntil('events on every story before the kill', () => publishers.every((p) => p.acked.length >= 5));
  await server.stop('SIGKILL');
  server = await restartStoryline(port, { redisUrl: redis.url, env });
  const marks = publishers.map((p) => p.acked.length);
  await pollUntil('events on every story after the restart', () => publishers.every((p, i) => p.acked.length >= marks[i] + 5));
  const acked = await Promise.all(publishers.map((p) => p.stop()));
  await pollUntil('every story delivered', () => page.evaluate((lasts) =>
    lasts.every(([story, id]) => window.subs.multi.rec.events.some((e) => e.story === story && e.id === id)),
  stories.map((s, i) => [s, acked[i][acked[i].length - 1]])), 20_000);

  const got = await page.evaluate(() => ({ ...window.subs.multi.rec, stats: window.subs.multi.sub.stats }));
  const perStory = stories.map((s) => got.events.filter((e) => e.story === s).map((e) => e.id));
  summary('20 stories, one connection (chromium, redis)', {
    stories: stories.length, acknowledged: acked.reduce((a, l) => a + l.length, 0), delivered: got.events.length,
    per_story: perStory.map((l) => l.length).join('/'), connections: got.stats.connections,
    duplicates_dropped: got.stats.duplicates, stream_requests: streamRequests.length,
  });
  stories.forEach((s, i) => {
    assert.equal(new Set(perStory[i]).size, perStory[i].length, `${s}: no duplicate`);
    assert.deepEqual(perStory[i], acked[i], `${s}: exactly the acknowledged events, in order`);
  });
  assert.ok(streamRequests.every((u) => u.includes('/v1/streams?stories=')), 'only multi-story stream requests');
  assert.equal(streamRequests.length, got.stats.connections, 'one request per connection, one connection at a time');
  assert.ok(got.stats.connections >= 2, 'reconnected after the restart');
});

/** The ```html block after `<!-- example: browser -->` in README.md, or null. */
async function readmeExample() {
  const lines = (await readFile(path.join(repoRoot, 'README.md'), 'utf8')).split('\n');
  const marker = lines.indexOf('<!-- example: browser -->');
  if (marker < 0) return null;
  const open = lines.findIndex((l, i) => i > marker && l.startsWith('```'));
  if (open !== marker + 1 || lines[open] !== '```html') return null;
  const close = lines.findIndex((l, i) => i > open && l === '```');
  return `${lines.slice(open + 1, close).join('\n')}\n`;
}

test('README browser example: the block equals examples/browser.html, and that page shows the events', async (t) => {
  const file = path.join(clientDir, 'examples/browser.html');
  assert.equal(await readmeExample(), await readFile(file, 'utf8'), 'README.md carries examples/browser.html exactly');

  const site = await staticServer({
    '/page.html': [file, 'text/html; charset=utf-8'],
    '/storyline.js': [path.join(clientDir, 'src/storyline.js'), 'text/javascript; charset=utf-8'],
  });
  const server = await startStoryline({ env: { STORYLINE_CORS_ORIGINS: site.origin } });
  const page = await browser.page();
  const states = [];
  page.on('console', (m) => states.push(m.text()));
  t.after(async () => {
    await page.close();
    await server.stop();
    await site.close();
  });
  await page.goto(`${site.origin}/page.html#server=${encodeURIComponent(server.baseUrl)}&token=${encodeURIComponent(mintToken({ scope: 'read:demo' }))}`);
  await pollUntil('the example connected', () => states.includes('storyline: open'));
  const texts = [];
  for (let i = 1; i <= 3; i++) {
    await publish('demo', { type: 'chapter', data: { text: `part ${i}` } }, { baseUrl: server.baseUrl, token: mintToken() });
    texts.push(`chapter: {"text":"part ${i}"}`);
  }
  await pollUntil('three items', async () => (await page.$$('#events li')).length === 3);
  assert.deepEqual(await page.$$eval('#events li', (l) => l.map((x) => x.textContent)), texts);
});
