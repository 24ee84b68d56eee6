// Browser plumbing: Debian's Chromium driven by playwright-core (never a browser download), with a fresh profile
// per launch, and a tiny static server for pages that storyline does not serve (the README example, a test page
// that loads the client from clients/js/src). No assertions here.
import { mkdtemp, rm, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import http from 'node:http';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { mintToken } from './helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
export const clientDir = path.resolve(here, '..');
export const chromiumPath = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

/** Chromium, headless, with a fresh user data dir removed by close(). */
export async function launchChromium() {
  process.env.PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD = '1';
  const { chromium } = await import('playwright-core');
  const profile = await mkdtemp(path.join(tmpdir(), 'storyline-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath,
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  return {
    context,
    profile,
    async page() {
      const page = await context.newPage();
      page.on('pageerror', (e) => console.log(`# page error: ${e.message}`));
      return page;
    },
    async close() {
      await context.close();
      await rm(profile, { recursive: true, force: true });
    },
  };
}

/**
 * Serves fixed files: `files` maps a URL path to [file path, content type], or to a function of the URL that
 * returns [body, content type].
 */
export async function staticServer(files) {
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://x');
    const entry = files[url.pathname];
    if (typeof entry === 'function') {
      const [body, type] = entry(url);
      res.writeHead(200, { 'Content-Type': type, 'Cache-Control': 'no-store' });
      res.end(body);
      return;
    }
    if (!entry) {
      res.writeHead(404).end();
      return;
    }
    const [file, type] = entry;
    res.writeHead(200, { 'Content-Type': type, 'Cache-Control': 'no-store' });
    res.end(await readFile(file));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    origin: `http://127.0.0.1:${server.address().port}`,
    close: () => new Promise((r) => {
      server.closeAllConnections();
      server.close(r);
    }),
  };
}

/**
 * A page that only loads the client (clients/js/src/storyline.js) as a module, for page.evaluate, and a token
 * endpoint (`/token?ttl=<secs>&scope=<scope>`) standing in for the app's own, which getToken calls.
 */
export async function clientPageServer() {
  const page = path.join(clientDir, 'test/fixtures/client.html');
  return staticServer({
    '/': [page, 'text/html; charset=utf-8'],
    '/storyline.js': [path.join(clientDir, 'src/storyline.js'), 'text/javascript; charset=utf-8'],
    '/token': (url) => [
      mintToken({ ttlSecs: Number(url.searchParams.get('ttl') ?? 3600), scope: url.searchParams.get('scope') ?? 'read:* write:*' }),
      'text/plain',
    ],
  });
}
