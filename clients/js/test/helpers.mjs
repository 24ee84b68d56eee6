// Test plumbing: a real redis-server and the real storyline binary on free loopback ports, HS256 tokens minted with
// node:crypto, a publisher that counts what was acknowledged, and polling with a deadline. No assertions here.
import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { publish } from '../src/storyline.js';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const storylineBin = process.env.STORYLINE_BIN || path.join(repoRoot, 'target/debug/storyline');

/** Polls `check` until it returns a truthy value or `ms` pass; returns the value or throws naming `what`. */
export async function pollUntil(what, check, ms = 15_000, every = 25) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

/** A port the kernel just gave out and took back (for a process that must be restarted on the same port). */
export async function freePort() {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  server.close();
  await once(server, 'close');
  return port;
}

/** Whether something accepts TCP connections on the port. */
function accepts(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

function redisPing(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    let reply = '';
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.on('data', (d) => {
      reply += d;
      if (reply.includes('\r\n')) {
        socket.destroy();
        resolve(reply.startsWith('+PONG'));
      }
    });
    socket.once('error', () => resolve(false));
  });
}

/** A redis-server on a free port with no persistence, killed by stop(). */
export async function startRedis() {
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: 'ignore',
  });
  const exited = once(child, 'exit');
  await pollUntil(`redis-server on port ${port}`, () => redisPing(port), 10_000);
  return {
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await exited;
      }
    },
  };
}

export const SECRET = 'js-client-tests-' + randomBytes(16).toString('hex');

function b64url(value) {
  return Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');
}

/** An HS256 JWT: `scope` space-separated, `ttlSecs` until `exp` (whole seconds, as JWTs count), a fresh `jti`. */
export function mintToken({ sub = 'js-test', scope = 'read:* write:*', tier = 'admin', ttlSecs = 3600, secret = SECRET, jti = randomBytes(16).toString('hex') } = {}) {
  const exp = Math.floor(Date.now() / 1000) + ttlSecs;
  const body = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url({ sub, exp, scope, tier, jti })}`;
  const sig = createHmac('sha256', secret).update(body).digest('base64url');
  return `${body}.${sig}`;
}

/**
 * The storyline binary (`serve`), listening on `port` (0: a free one, reported back), with a clean environment:
 * only PATH, the JWT secret, fast retry hints and `env`. stop(signal) sends the signal and waits for the exit.
 */
export async function startStoryline({ port = 0, redisUrl, env = {} } = {}) {
  const environment = {
    PATH: process.env.PATH,
    STORYLINE_LISTEN: `127.0.0.1:${port}`,
    STORYLINE_LOG_FORMAT: 'json',
    STORYLINE_JWT_SECRET: SECRET,
    STORYLINE_JWT_LEEWAY_SECS: '0',
    STORYLINE_RETRY_MS: '200',
    STORYLINE_DRAIN_WINDOW_SECS: '1',
    STORYLINE_SHUTDOWN_GRACE_SECS: '1',
    STORYLINE_PUBLISH_RATE_ADMIN: '0',
    STORYLINE_PUBLISH_RATE_PER_STORY: '0',
    STORYLINE_STREAM_OPENS_PER_IP: '0',
    RUST_LOG: 'info',
    ...(redisUrl ? { STORYLINE_REDIS_URL: redisUrl } : {}),
    ...env,
  };
  const child = spawn(storylineBin, ['serve'], { env: environment, stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = once(child, 'exit');
  const logs = [];
  const address = new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    lines.on('line', (line) => {
      logs.push(line);
      try {
        const entry = JSON.parse(line);
        if (entry.fields?.message === 'listening') resolve(entry.fields.address);
      } catch {
        // not a JSON log line (the quickstart hint)
      }
    });
    child.stderr.on('data', (d) => logs.push(String(d)));
    child.once('exit', (code, signal) => reject(new Error(`storyline exited (${code ?? signal}) before listening:\n${logs.join('\n')}`)));
  });
  const timeout = setTimeout(() => child.kill('SIGKILL'), 30_000);
  const bound = await address.finally(() => clearTimeout(timeout));
  const boundPort = Number(bound.split(':').pop());
  return {
    baseUrl: `http://127.0.0.1:${boundPort}`,
    port: boundPort,
    logs,
    running: () => child.exitCode === null && child.signalCode === null,
    /** Sends `signal` (SIGKILL, SIGTERM) and waits until the process is gone. */
    async stop(signal = 'SIGKILL') {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill(signal);
        await exited;
      }
    },
  };
}

/** Starts storyline on `port`, retrying while the port is still being released by the previous instance. */
export async function restartStoryline(port, options) {
  return pollUntil(`storyline restarted on port ${port}`, async () => {
    try {
      return await startStoryline({ ...options, port });
    } catch (e) {
      if (await accepts(port)) throw e;
      return null;
    }
  }, 20_000, 100);
}

/**
 * Publishes `chapter` events to `story` one after another until stop(), each retried (same key) until
 * acknowledged, through a server that may be down for a while. `acked` lists the receipts' ids in order.
 */
export function startPublisher(baseUrl, story, { token = mintToken(), pauseMs = 20, onAck } = {}) {
  const acked = [];
  let stopping = false;
  let n = 0;
  const done = (async () => {
    while (!stopping) {
      n += 1;
      const receipt = await publish(story, { type: 'chapter', data: { n } }, {
        baseUrl: typeof baseUrl === 'function' ? baseUrl() : baseUrl,
        token,
        maxAttempts: 200,
        timeoutMs: 3000,
        backoff: { baseMs: 50, capMs: 300 },
      });
      acked.push(receipt.id);
      onAck?.(receipt);
      if (pauseMs > 0) await new Promise((r) => setTimeout(r, pauseMs));
    }
  })();
  return {
    acked,
    /** Stops after the publish in flight is acknowledged. */
    async stop() {
      stopping = true;
      await done;
      return acked;
    },
  };
}

/** An app that records what a subscription delivers. */
export function recorder() {
  const rec = { events: [], gaps: [], statuses: [], errors: [] };
  rec.onEvent = (e) => rec.events.push(e);
  rec.onGap = (g) => rec.gaps.push(g);
  rec.onStatus = (s) => rec.statuses.push({ ...s, at: Date.now() });
  rec.onError = (e) => rec.errors.push(e);
  rec.ids = (story) => rec.events.filter((e) => story == null || e.story === story).map((e) => e.id);
  return rec;
}

/** Every retained event of a story, oldest first, through the history endpoint. */
export async function history(baseUrl, story, token = mintToken()) {
  const out = [];
  let after = '0';
  for (;;) {
    const res = await fetch(`${baseUrl}/v1/stories/${story}/events?after=${after}&limit=1000`, {
      headers: { Authorization: `Bearer ${token}` },
    });
    if (res.status !== 200) throw new Error(`history ${story}: ${res.status} ${await res.text()}`);
    const page = await res.json();
    out.push(...page.events);
    if (!page.next || page.events.length === 0) return out;
    after = page.next;
  }
}

/** Counts of what an app got, for the test's log line. */
export function summary(label, fields) {
  console.log(`# ${label}: ${Object.entries(fields).map(([k, v]) => `${k}=${v}`).join(' ')}`);
}
