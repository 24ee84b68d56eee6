// storyline: a small client for storyline's streams and its publish endpoint, for browsers and Node >= 20.
//
// subscribe() keeps a reader on one story (GET /v1/stories/{story}/stream) or on several over one connection
// (GET /v1/streams?stories=a,b,c, with a composite resume cursor), and survives what a bare EventSource does not:
// a 503 or 429 (it waits Retry-After, with jitter), a 401 or a `token-expired` frame (it asks getToken() for a new
// token and resumes where it was), network errors (capped exponential backoff with full jitter, never a fixed
// interval), a `gap` (reported to the app), and a replay after an at-least-once resume (duplicate ids are
// dropped, per story). publish() appends one event with an Idempotency-Key and retries the same key.
//
// A revoked token (a `token-revoked` frame, or a 401 `token-revoked`) is final: it is never sent again. With
// getToken, the client asks it once for a different token and goes on with that (a revoked jti leaves the
// principal's other tokens valid); without getToken, or if getToken returns the same token, or if the new token is
// revoked too (its sub was), the subscription closes with a ProblemError whose problemType is `token-revoked`, and
// publish() throws it.
//
// No dependencies. The native EventSource is used where it suffices (a browser, one story, a known cursor, and the
// app names the event types it wants, since EventSource has no catch-all listener); everything else, and every
// connection whose HTTP status must be read (the one after an EventSource refusal), goes through fetch() with the
// SSE parser below. EventSource's own reconnect (a fixed interval) is never used: on its first error the client
// closes it and applies its own policy.

const STORY_ID = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;
const EVENT_ID = /^(0|[0-9]{1,19}-[0-9]{1,19})$/;

// ---------------------------------------------------------------------------------------------------------------
// Errors

/** Base class of every error this module throws or reports. */
export class StorylineError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = 'StorylineError';
  }
}

/** The server answered with an error status; `problem` is its application/problem+json body (RFC 9457). */
export class ProblemError extends StorylineError {
  constructor(status, problem, retryAfterMs) {
    const p = problem && typeof problem === 'object' ? problem : {};
    super(`${status} ${p.title ?? 'HTTP error'}${p.detail ? `: ${p.detail}` : ''}`);
    this.name = 'ProblemError';
    /** HTTP status code. */
    this.status = status;
    /** The problem+json body, or a minimal one when the body was not problem+json. */
    this.problem = {
      type: typeof p.type === 'string' ? p.type : 'about:blank',
      title: typeof p.title === 'string' ? p.title : `HTTP ${status}`,
      status: typeof p.status === 'number' ? p.status : status,
      detail: typeof p.detail === 'string' ? p.detail : '',
    };
    /** The problem type's slug: `draining`, `unconfirmed`, `rate-limited`, ... (from urn:storyline:problem:<slug>). */
    this.problemType = this.problem.type.startsWith('urn:storyline:problem:')
      ? this.problem.type.slice('urn:storyline:problem:'.length)
      : this.problem.type;
    /** Retry-After in milliseconds, or null when the answer had none. */
    this.retryAfterMs = retryAfterMs;
  }
}

/** The request did not get an HTTP answer (connection refused or reset, timeout, a body cut short). */
export class NetworkError extends StorylineError {
  constructor(message, options) {
    super(message, options);
    this.name = 'NetworkError';
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Delays

/**
 * Capped exponential backoff with full jitter: uniform in [0, min(cap, base * 2^attempt)).
 * @param {number} attempt 0 for the first retry
 */
export function backoffDelay(attempt, { baseMs = 500, capMs = 30_000 } = {}, random = Math.random) {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/**
 * The wait after an answer with Retry-After: never earlier than the server asked, spread with full jitter over one
 * more Retry-After (uniform in [ra, 2 ra)), so that the clients one 503 turned away do not come back together.
 */
export function retryAfterDelay(retryAfterMs, random = Math.random) {
  return Math.floor(retryAfterMs + random() * retryAfterMs);
}

/** Retry-After (delay-seconds or an HTTP-date) in milliseconds, or null. */
export function parseRetryAfter(value, now = Date.now()) {
  if (value == null) return null;
  const text = String(value).trim();
  if (/^[0-9]{1,9}$/.test(text)) return Number(text) * 1000;
  if (!/^[A-Za-z]{3}, /.test(text)) return null; // an HTTP-date (IMF-fixdate) starts with the day's name
  const at = Date.parse(text);
  return Number.isNaN(at) ? null : Math.max(0, at - now);
}

// ---------------------------------------------------------------------------------------------------------------
// Event ids

/** Compares two event ids (`<ms>-<seq>`, or `0` for "before everything"): negative, 0 or positive. */
export function compareIds(a, b) {
  const [am, as = ''] = a.split('-');
  const [bm, bs = ''] = b.split('-');
  return compareDigits(am, bm) || compareDigits(as, bs);
}

function compareDigits(a, b) {
  const x = a.replace(/^0+(?=.)/, '');
  const y = b.replace(/^0+(?=.)/, '');
  if (x.length !== y.length) return x.length - y.length;
  return x < y ? -1 : x > y ? 1 : 0;
}

// ---------------------------------------------------------------------------------------------------------------
// SSE parser (the WHATWG HTML "event stream interpretation", for fetch streaming)

/**
 * An incremental text/event-stream parser. Feed it decoded text with push(); it calls
 *   onEvent({type, data, lastEventId}) for each dispatched event (a frame with data),
 *   onId(lastEventId) when a frame without data sets a new last event id (an id-only frame),
 *   onRetry(ms) for a valid `retry:` field, onComment(text) for each comment line.
 * Lines end in CRLF, LF or CR (a CR at the end of one chunk and an LF at the start of the next are one ending);
 * a leading BOM is skipped; an `id` containing NUL is ignored; an incomplete frame at the end is discarded.
 */
export class SseParser {
  constructor({ onEvent, onId, onRetry, onComment } = {}) {
    this.onEvent = onEvent ?? (() => {});
    this.onId = onId ?? (() => {});
    this.onRetry = onRetry ?? (() => {});
    this.onComment = onComment ?? (() => {});
    this.buffer = '';
    this.started = false;
    this.skipLf = false;
    this.data = '';
    this.hasData = false;
    this.type = '';
    this.lastEventId = '';
    this.reportedId = '';
  }

  /** Feeds decoded text. */
  push(text) {
    let chunk = text;
    if (!this.started && chunk.length > 0) {
      this.started = true;
      if (chunk.charCodeAt(0) === 0xfeff) chunk = chunk.slice(1);
    }
    if (this.skipLf && chunk.length > 0) {
      if (chunk[0] === '\n') chunk = chunk.slice(1);
      this.skipLf = false;
    }
    this.buffer += chunk;
    let start = 0;
    for (;;) {
      let end = -1;
      for (let i = start; i < this.buffer.length; i++) {
        const c = this.buffer.charCodeAt(i);
        if (c === 10 || c === 13) {
          end = i;
          break;
        }
      }
      if (end < 0) break;
      const line = this.buffer.slice(start, end);
      if (this.buffer.charCodeAt(end) === 13) {
        if (end + 1 < this.buffer.length) {
          start = this.buffer.charCodeAt(end + 1) === 10 ? end + 2 : end + 1;
        } else {
          this.skipLf = true;
          start = end + 1;
        }
      } else {
        start = end + 1;
      }
      this.line(line);
    }
    this.buffer = this.buffer.slice(start);
  }

  /** The stream ended: a frame without its blank line is discarded, as the spec says. */
  end() {
    this.buffer = '';
    this.data = '';
    this.hasData = false;
    this.type = '';
  }

  line(line) {
    if (line === '') {
      this.dispatch();
      return;
    }
    if (line[0] === ':') {
      this.onComment(line.slice(line[1] === ' ' ? 2 : 1));
      return;
    }
    const colon = line.indexOf(':');
    let field = line;
    let value = '';
    if (colon >= 0) {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value[0] === ' ') value = value.slice(1);
    }
    switch (field) {
      case 'event':
        this.type = value;
        break;
      case 'data':
        this.data += `${value}\n`;
        this.hasData = true;
        break;
      case 'id':
        if (!value.includes('\0')) this.lastEventId = value;
        break;
      case 'retry':
        if (/^[0-9]+$/.test(value)) this.onRetry(Number(value));
        break;
      default:
        break;
    }
  }

  dispatch() {
    const newId = this.lastEventId !== this.reportedId;
    this.reportedId = this.lastEventId;
    if (!this.hasData) {
      // An id-only frame dispatches nothing but sets the last event id (the spec's step 1 of dispatch).
      this.type = '';
      if (newId) this.onId(this.lastEventId);
      return;
    }
    const data = this.data.slice(0, -1);
    const type = this.type || 'message';
    this.data = '';
    this.hasData = false;
    this.type = '';
    this.onEvent({ type, data, lastEventId: this.lastEventId });
  }
}

// ---------------------------------------------------------------------------------------------------------------
// subscribe

/**
 * Reads one story, or several over one connection, until close().
 *
 * @param {string | string[]} storyOrStories
 * @param {import('./storyline').SubscribeOptions} options
 * @returns {import('./storyline').Subscription}
 */
export function subscribe(storyOrStories, options = {}) {
  const stories = Array.isArray(storyOrStories) ? [...storyOrStories] : [storyOrStories];
  if (stories.length === 0) throw new TypeError('subscribe: no story given');
  for (const story of stories) {
    if (typeof story !== 'string' || !STORY_ID.test(story)) {
      throw new TypeError(`subscribe: invalid story id ${JSON.stringify(story)}`);
    }
  }
  if (new Set(stories).size !== stories.length) throw new TypeError('subscribe: a story is named twice');
  if (options.token == null && typeof options.getToken !== 'function') {
    throw new TypeError('subscribe: give a token or getToken');
  }
  const sub = new Subscription(stories, options);
  sub.start();
  return sub;
}

class Subscription {
  constructor(stories, options) {
    this.stories = stories;
    this.multi = stories.length > 1;
    this.baseUrl = options.baseUrl ?? globalThis.location?.origin;
    if (!this.baseUrl) throw new TypeError('subscribe: baseUrl is required outside a browser');
    this.token = options.token ?? null;
    this.getToken = options.getToken ?? null;
    this.onEvent = options.onEvent ?? (() => {});
    this.onGap = options.onGap ?? (() => {});
    this.onStatus = options.onStatus ?? (() => {});
    this.onError = options.onError ?? (() => {});
    this.transport = options.transport ?? 'auto';
    this.eventTypes = options.eventTypes ?? null;
    this.backoff = { baseMs: options.backoff?.baseMs ?? 500, capMs: options.backoff?.capMs ?? 30_000 };
    this.idleTimeoutMs = options.idleTimeoutMs ?? 45_000;
    this.random = options.random ?? Math.random;
    /** Per story: the last position delivered (an event id, `0`, or null when unknown). */
    this.positions = new Map(stories.map((s) => [s, null]));
    this.setCursor(options.lastEventId);
    this.lastGap = new Map();
    this.attempt = 0;
    this.retryHintMs = null;
    this.closed = false;
    this.timer = null;
    this.idleTimer = null;
    this.abort = null;
    this.source = null;
    this.probeNext = false;
    this.stats = { delivered: 0, duplicates: 0, gaps: 0, connections: 0, tokenRefreshes: 0 };
    /** The token the server revoked since the last open, if any: never sent again, and getToken is asked once. */
    this.revokedToken = null;
  }

  setCursor(cursor) {
    if (cursor == null || cursor === '') return;
    if (typeof cursor === 'object') {
      for (const [story, id] of Object.entries(cursor)) {
        if (!this.positions.has(story) || !EVENT_ID.test(id)) throw new TypeError(`subscribe: bad lastEventId for ${story}`);
        this.positions.set(story, id);
      }
      return;
    }
    const parts = String(cursor).split(',');
    if (parts.length !== this.stories.length || !parts.every((p) => EVENT_ID.test(p))) {
      throw new TypeError(`subscribe: lastEventId ${JSON.stringify(cursor)} does not fit ${this.stories.length} stories`);
    }
    this.stories.forEach((s, i) => this.positions.set(s, parts[i]));
  }

  /** The resume cursor: the last id (one story) or the composite cursor (several), or null if none is known. */
  get lastEventId() {
    const parts = this.stories.map((s) => this.positions.get(s));
    return parts.some((p) => p == null) ? null : parts.join(',');
  }

  status(state, extra = {}) {
    try {
      this.onStatus({ state, ...extra });
    } catch (e) {
      reportLater(e);
    }
  }

  start() {
    this.connect();
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.teardown();
    clearTimeout(this.timer);
    this.timer = null;
    this.status('closed', { reason: 'closed' });
  }

  teardown() {
    clearTimeout(this.idleTimer);
    this.idleTimer = null;
    if (this.abort) {
      this.abort.abort();
      this.abort = null;
    }
    if (this.source) {
      this.source.close();
      this.source = null;
    }
  }

  fail(error) {
    if (this.closed) return;
    this.closed = true;
    this.teardown();
    clearTimeout(this.timer);
    this.timer = null;
    this.status('closed', { reason: 'error', error });
    try {
      this.onError(error);
    } catch (e) {
      reportLater(e);
    }
  }

  /** Waits, then reconnects. Only one reconnect is ever pending. */
  schedule(delayMs, reason, extra = {}) {
    if (this.closed) return;
    this.teardown();
    clearTimeout(this.timer);
    this.status('waiting', { delayMs, reason, attempt: this.attempt, ...extra });
    this.timer = setTimeout(() => {
      this.timer = null;
      this.connect();
    }, delayMs);
  }

  retryOnNetworkError(reason, error) {
    const delay = backoffDelay(this.attempt, this.backoff, this.random);
    this.attempt += 1;
    this.schedule(delay, reason, error ? { error } : {});
  }

  async refreshToken() {
    if (!this.getToken) return false;
    this.stats.tokenRefreshes += 1;
    this.token = await this.getToken();
    return true;
  }

  async connect() {
    if (this.closed) return;
    try {
      if (this.token == null) this.token = await this.getToken();
    } catch (error) {
      this.retryOnNetworkError('get-token', error);
      return;
    }
    if (this.closed) return;
    this.stats.connections += 1;
    this.status('connecting', { attempt: this.attempt });
    if (this.useEventSource()) this.openEventSource();
    else this.openFetch();
  }

  useEventSource() {
    const probe = this.probeNext;
    this.probeNext = false;
    if (probe || typeof globalThis.EventSource !== 'function') return false;
    // Without a cursor the start position comes from the multi-story endpoint's first id-only frame, which
    // EventSource does not expose.
    if (this.lastEventId == null) return false;
    if (this.transport === 'eventsource') return true;
    return this.transport === 'auto' && Array.isArray(this.eventTypes) && !this.multi;
  }

  url(forEventSource) {
    // With no cursor yet, even one story opens on /v1/streams: its first frame (id-only) names where the stream
    // starts, so a reconnect before the first event resumes exactly instead of skipping what came in between.
    const url = this.multi || this.lastEventId == null
      ? new URL(`/v1/streams?stories=${this.stories.join(',')}`, this.baseUrl)
      : new URL(`/v1/stories/${this.stories[0]}/stream`, this.baseUrl);
    if (forEventSource) {
      url.searchParams.set('access_token', this.token);
      const cursor = this.lastEventId;
      if (cursor != null) url.searchParams.set('last_event_id', cursor);
    }
    return url.toString();
  }

  // -- fetch transport --

  async openFetch() {
    const controller = new AbortController();
    this.abort = controller;
    const headers = { Accept: 'text/event-stream', Authorization: `Bearer ${this.token}` };
    const cursor = this.lastEventId;
    if (cursor != null) headers['Last-Event-ID'] = cursor;
    let response;
    try {
      response = await fetch(this.url(false), { headers, signal: controller.signal, cache: 'no-store' });
    } catch (error) {
      if (this.closed || controller.signal.aborted) return;
      this.retryOnNetworkError('network', new NetworkError(String(error?.message ?? error), { cause: error }));
      return;
    }
    if (this.closed || controller.signal.aborted) return;
    if (response.status !== 200) {
      const error = await problemFrom(response);
      if (this.closed || controller.signal.aborted) return;
      this.handleRefusal(error);
      return;
    }
    this.opened();
    let tokenExpired = false;
    let tokenRevoked = false;
    const parser = new SseParser({
      onId: (id) => this.applyCursor(id),
      onRetry: (ms) => {
        this.retryHintMs = ms;
      },
      onEvent: (frame) => {
        if (frame.type === 'token-expired') tokenExpired = true;
        else if (frame.type === 'token-revoked') tokenRevoked = true;
        else this.frame(frame.type, frame.data, frame.lastEventId);
      },
    });
    const decoder = new TextDecoder();
    const reader = response.body.getReader();
    this.armIdle(controller);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || this.closed || controller.signal.aborted) break;
        this.lastByteAt = Date.now();
        parser.push(decoder.decode(value, { stream: true }));
        if (tokenExpired || tokenRevoked) break;
      }
    } catch (error) {
      if (this.closed || controller.signal.aborted) {
        if (!this.closed && this.idleFired) this.retryOnNetworkError('idle');
        return;
      }
      parser.end();
      this.retryOnNetworkError('network', new NetworkError(String(error?.message ?? error), { cause: error }));
      return;
    }
    reader.cancel().catch(() => {});
    if (this.closed) return;
    if (controller.signal.aborted) {
      if (this.idleFired) this.retryOnNetworkError('idle');
      return;
    }
    parser.end();
    if (tokenRevoked) this.onTokenRevoked(null);
    else if (tokenExpired) this.onTokenExpired();
    else this.ended();
  }

  armIdle(controller) {
    this.lastByteAt = Date.now();
    this.idleFired = false;
    const check = () => {
      const left = this.lastByteAt + this.idleTimeoutMs - Date.now();
      if (left > 0) {
        this.idleTimer = setTimeout(check, left);
        return;
      }
      this.idleTimer = null;
      this.idleFired = true;
      controller.abort();
    };
    this.idleTimer = setTimeout(check, this.idleTimeoutMs);
  }

  // -- EventSource transport --

  openEventSource() {
    const source = new globalThis.EventSource(this.url(true));
    this.source = source;
    let tokenExpired = false;
    const deliver = (type) => (e) => {
      if (this.source === source) this.frame(type, e.data, e.lastEventId);
    };
    for (const type of new Set([...(this.eventTypes ?? []), 'gap'])) source.addEventListener(type, deliver(type));
    source.addEventListener('token-expired', () => {
      tokenExpired = true;
    });
    let tokenRevoked = false;
    source.addEventListener('token-revoked', () => {
      tokenRevoked = true;
    });
    source.onopen = () => {
      if (this.source === source) this.opened();
    };
    source.onerror = () => {
      if (this.source !== source) return;
      const refused = source.readyState === 2; // CLOSED: a non-200 answer, whose status EventSource hides
      source.close();
      this.source = null;
      if (tokenRevoked) this.onTokenRevoked(null);
      else if (tokenExpired) this.onTokenExpired();
      else if (refused) {
        // Learn the status (503 + Retry-After, 401, 429...) by making the next attempt with fetch.
        this.probeNext = true;
        this.retryOnNetworkError('refused');
      } else this.ended();
    };
  }

  // -- shared --

  opened() {
    this.attempt = 0;
    this.revokedToken = null;
    this.status('open');
  }

  /** The server ended a stream that was open (a drain, a restart, a proxy timeout): resume, spread out. */
  ended() {
    const ceiling = Math.max(this.retryHintMs ?? this.backoff.baseMs, this.backoff.baseMs);
    const delay = Math.floor(this.random() * Math.min(ceiling, this.backoff.capMs));
    this.attempt += 1;
    this.schedule(delay, 'ended');
  }

  async onTokenExpired() {
    this.teardown();
    this.status('waiting', { delayMs: 0, reason: 'token-expired', attempt: this.attempt });
    try {
      if (!(await this.refreshToken())) {
        this.fail(new ProblemError(401, { type: 'urn:storyline:problem:unauthenticated', title: 'Token expired', detail: 'the token expired and no getToken was given' }, null));
        return;
      }
    } catch (error) {
      this.token = null;
      this.retryOnNetworkError('get-token', error);
      return;
    }
    if (!this.closed) this.connect();
  }

  /**
   * The token was revoked (a `token-revoked` frame, or `error`: a 401 token-revoked at open). Never resend it: ask
   * getToken once for a different token, else close with the token-revoked problem.
   */
  async onTokenRevoked(error) {
    this.teardown();
    const revoked = this.token;
    const final = error ?? new ProblemError(401, { type: 'urn:storyline:problem:token-revoked', title: 'Token revoked', detail: 'the stream ended with a token-revoked frame' }, null);
    if (!this.getToken || this.revokedToken != null) {
      // No source, or the source's new token was revoked as well (its sub is): nothing else to try.
      this.fail(final);
      return;
    }
    this.revokedToken = revoked;
    this.status('waiting', { delayMs: 0, reason: 'token-revoked', attempt: this.attempt });
    try {
      await this.refreshToken();
    } catch (error) {
      this.token = null;
      this.retryOnNetworkError('get-token', error);
      return;
    }
    if (this.token == null || this.token === revoked) {
      this.fail(final);
      return;
    }
    if (!this.closed) this.connect();
  }

  handleRefusal(error) {
    const { status } = error;
    if (status === 401 && error.problemType === 'token-revoked') {
      this.onTokenRevoked(error);
      return;
    }
    if (status === 401 && this.getToken) {
      // The first 401 refreshes at once; repeated ones back off (a getToken that keeps returning a bad token).
      const delay = this.attempt === 0 ? 0 : backoffDelay(this.attempt, this.backoff, this.random);
      this.attempt += 1;
      this.token = null;
      this.stats.tokenRefreshes += 1;
      this.schedule(delay, 'unauthenticated', { error });
      return;
    }
    if (status === 503 || status === 429 || status === 502 || status === 504 || status === 500) {
      const delay = error.retryAfterMs != null
        ? retryAfterDelay(error.retryAfterMs, this.random)
        : backoffDelay(this.attempt, this.backoff, this.random);
      this.attempt += 1;
      this.schedule(delay, error.problemType || `http-${status}`, { error });
      return;
    }
    this.fail(error);
  }

  /** An id-only dispatch (or any dispatch): the server's cursor. Positions only move forward. */
  applyCursor(id) {
    if (!id) return;
    const parts = this.multi ? id.split(',') : [id];
    if (parts.length !== this.stories.length || !parts.every((p) => EVENT_ID.test(p))) return;
    this.stories.forEach((story, i) => {
      const known = this.positions.get(story);
      if (known == null || compareIds(parts[i], known) > 0) this.positions.set(story, parts[i]);
    });
  }

  frame(type, data, lastEventId) {
    let body;
    try {
      body = JSON.parse(data);
    } catch {
      return;
    }
    if (type === 'gap') {
      const story = body.story ?? this.stories[0];
      const key = `${body.requested}>${body.resumed_from}`;
      if (lastEventId) this.applyCursor(lastEventId);
      if (this.lastGap.get(story) === key) return; // the same gap again, after a resume before any event
      this.lastGap.set(story, key);
      this.stats.gaps += 1;
      safeCall(this.onGap, { story, requested: body.requested, resumedFrom: body.resumed_from });
      return;
    }
    const story = body.story ?? this.stories[0];
    if (!this.positions.has(story) || typeof body.id !== 'string' || !EVENT_ID.test(body.id)) return;
    const known = this.positions.get(story);
    if (known != null && compareIds(body.id, known) <= 0) {
      this.stats.duplicates += 1;
      return;
    }
    this.positions.set(story, body.id);
    if (lastEventId) this.applyCursor(lastEventId);
    this.stats.delivered += 1;
    safeCall(this.onEvent, body);
  }
}

function safeCall(fn, arg) {
  try {
    fn(arg);
  } catch (e) {
    reportLater(e);
  }
}

/** An app callback threw: report it without breaking the stream. */
function reportLater(e) {
  setTimeout(() => {
    throw e;
  }, 0);
}

async function problemFrom(response) {
  const retryAfterMs = parseRetryAfter(response.headers.get('Retry-After'));
  let problem = null;
  try {
    const text = await response.text();
    problem = JSON.parse(text);
  } catch {
    problem = null;
  }
  return new ProblemError(response.status, problem, retryAfterMs);
}

// ---------------------------------------------------------------------------------------------------------------
// publish

/**
 * Appends one event to a story. Retries with the SAME Idempotency-Key (generated when none is given) on 503
 * (`unconfirmed`, `unavailable`, ...), 429 and network errors, waiting Retry-After (jittered) or a capped
 * exponential backoff with full jitter; a 401 with getToken refreshes the token once. Gives up after
 * `maxAttempts` with the last error (a ProblemError or a NetworkError). Every other answer is permanent and thrown
 * at once, among them 422 `idempotency-key-mismatch`: the key was already used on the story for a different event
 * (nothing was stored, and repeating cannot help; a new event needs a new key).
 *
 * @param {string} story
 * @param {{type: string, data: unknown}} event
 * @param {import('./storyline').PublishOptions} options
 * @returns {Promise<import('./storyline').Receipt>}
 */
export async function publish(story, event, options = {}) {
  if (typeof story !== 'string' || !STORY_ID.test(story)) throw new TypeError(`publish: invalid story id ${JSON.stringify(story)}`);
  if (!event || typeof event.type !== 'string') throw new TypeError('publish: event needs a type');
  if (options.token == null && typeof options.getToken !== 'function') throw new TypeError('publish: give a token or getToken');
  const baseUrl = options.baseUrl ?? globalThis.location?.origin;
  if (!baseUrl) throw new TypeError('publish: baseUrl is required outside a browser');
  const key = options.idempotencyKey ?? globalThis.crypto.randomUUID();
  const maxAttempts = options.maxAttempts ?? 6;
  const backoff = { baseMs: options.backoff?.baseMs ?? 250, capMs: options.backoff?.capMs ?? 10_000 };
  const timeoutMs = options.timeoutMs ?? 10_000;
  const random = options.random ?? Math.random;
  const body = JSON.stringify({ type: event.type, data: event.data ?? null });
  const url = new URL(`/v1/stories/${story}/events`, baseUrl).toString();
  let token = options.token ?? (await options.getToken());
  let refreshed = false;
  let lastError = null;
  for (let attempt = 0; attempt < maxAttempts; attempt++) {
    if (options.signal?.aborted) throw options.signal.reason ?? new StorylineError('publish aborted');
    let delay;
    const controller = new AbortController();
    const onAbort = () => controller.abort();
    options.signal?.addEventListener('abort', onAbort, { once: true });
    const timeout = setTimeout(() => controller.abort(), timeoutMs);
    try {
      const response = await fetch(url, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}`, 'Idempotency-Key': key },
        body,
        signal: controller.signal,
      });
      if (response.status === 200 || response.status === 201) {
        const receipt = await response.json();
        return { ...receipt, idempotencyKey: key, duplicate: response.status === 200, attempts: attempt + 1 };
      }
      const error = await problemFrom(response);
      lastError = error;
      if (response.status === 401 && options.getToken && !refreshed) {
        refreshed = true;
        const previous = token;
        token = await options.getToken();
        // A revoked token is never sent again.
        if (error.problemType === 'token-revoked' && token === previous) throw error;
        delay = 0;
      } else if (response.status === 503 || response.status === 429) {
        // Transient. Everything else (4xx, among them 422 idempotency-key-mismatch, and 500) is permanent.
        delay = error.retryAfterMs != null ? retryAfterDelay(error.retryAfterMs, random) : backoffDelay(attempt, backoff, random);
      } else {
        throw error;
      }
    } catch (error) {
      if (error instanceof ProblemError) throw error;
      if (options.signal?.aborted) throw options.signal.reason ?? new StorylineError('publish aborted');
      lastError = new NetworkError(String(error?.message ?? error), { cause: error });
      delay = backoffDelay(attempt, backoff, random);
    } finally {
      clearTimeout(timeout);
      options.signal?.removeEventListener('abort', onAbort);
    }
    if (attempt + 1 < maxAttempts) {
      options.onRetry?.({ attempt: attempt + 1, delayMs: delay, error: lastError, idempotencyKey: key });
      await sleep(delay, options.signal);
    }
  }
  throw lastError;
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    if (ms <= 0) {
      resolve();
      return;
    }
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}
