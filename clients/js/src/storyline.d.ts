// Type declarations for storyline.js.

/** An event as a reader receives it: the envelope of the stream's `data:` line. */
export interface StoryEvent<T = unknown> {
  /** `<ms>-<seq>`, strictly increasing per story. */
  id: string;
  story: string;
  type: string;
  data: T;
  author?: string;
  ts?: number | string;
  [key: string]: unknown;
}

/** Events after `requested` were trimmed before they could be delivered; delivery resumed at `resumedFrom`. */
export interface Gap {
  story: string;
  requested: string;
  resumedFrom: string;
}

export type Status =
  | { state: 'connecting'; attempt: number }
  | { state: 'open' }
  | {
      state: 'waiting';
      /** How long until the next attempt, in ms. */
      delayMs: number;
      /** `network`, `ended`, `idle`, `refused`, `token-expired`, `token-revoked`, `unauthenticated`, `get-token`, or a problem type slug (`draining`, `at-capacity`, `rate-limited`, `unavailable`, ...). */
      reason: string;
      attempt: number;
      error?: StorylineError;
    }
  | { state: 'closed'; reason: 'closed' | 'error'; error?: StorylineError };

export interface Backoff {
  /** First retry's ceiling in ms (default 500; publish: 250). */
  baseMs?: number;
  /** Largest ceiling in ms (default 30000; publish: 10000). */
  capMs?: number;
}

export interface SubscribeOptions {
  /** Origin of the storyline server; defaults to the page's origin in a browser. */
  baseUrl?: string;
  /** A JWT with read scope for every story. */
  token?: string;
  /** Called for the first token when `token` is not given, on a `token-expired` frame and on a 401; once after a revocation (`token-revoked` frame or 401), whose token is never sent again. */
  getToken?: () => string | Promise<string>;
  /** Resume after this point: an event id or `0` for one story; the composite cursor (`id,id,...` in the order of the stories), or an object story → id, for several. None: only new events. */
  lastEventId?: string | Record<string, string>;
  onEvent?: (event: StoryEvent) => void;
  onGap?: (gap: Gap) => void;
  onStatus?: (status: Status) => void;
  /** A refusal that retrying cannot fix (400, 403, 404, a 401 without getToken, a revoked token that getToken could not replace: problemType `token-revoked`); the subscription is closed. */
  onError?: (error: StorylineError) => void;
  /** `auto` (default): EventSource in a browser for one story when `eventTypes` is given and a cursor is known, else fetch streaming; `eventsource` also for several stories (once a cursor is known). A connection after a refusal is always made with fetch, to read its status. */
  transport?: 'auto' | 'eventsource' | 'fetch';
  /** The event types to listen for with EventSource (it has no catch-all listener). */
  eventTypes?: string[];
  backoff?: Backoff;
  /** A connection that sends no byte (heartbeats included) for this long is dropped and resumed (fetch; default 45000). */
  idleTimeoutMs?: number;
  /** Source of randomness for the jitter, in [0, 1) (tests). */
  random?: () => number;
}

export interface Subscription {
  /** Stops reading: aborts the connection and clears every timer. */
  close(): void;
  /** The resume cursor (one story: the last id; several: the composite cursor), or null while none is known. */
  readonly lastEventId: string | null;
  readonly stats: {
    delivered: number;
    duplicates: number;
    gaps: number;
    connections: number;
    tokenRefreshes: number;
  };
}

export function subscribe(storyOrStories: string | string[], options: SubscribeOptions): Subscription;

export interface PublishOptions {
  baseUrl?: string;
  token?: string;
  getToken?: () => string | Promise<string>;
  /**
   * Sent as Idempotency-Key on every attempt; a random UUID when not given. A key already used on the story for a
   * different event is refused with a ProblemError 422 `idempotency-key-mismatch`, which is not retried (a new
   * event needs a new key).
   */
  idempotencyKey?: string;
  /** Attempts in all (default 6). */
  maxAttempts?: number;
  backoff?: Backoff;
  /** Per attempt (default 10000 ms); a timed-out attempt is retried with the same key. */
  timeoutMs?: number;
  signal?: AbortSignal;
  onRetry?: (info: { attempt: number; delayMs: number; error: StorylineError; idempotencyKey: string }) => void;
  random?: () => number;
}

export interface Receipt {
  id: string;
  story: string;
  type: string;
  ts: number | string;
  idempotencyKey: string;
  /** True when the server answered 200: an earlier attempt with this key had stored the event. */
  duplicate: boolean;
  attempts: number;
}

export function publish(story: string, event: { type: string; data?: unknown }, options: PublishOptions): Promise<Receipt>;

export class StorylineError extends Error {}

export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
}

export class ProblemError extends StorylineError {
  readonly status: number;
  readonly problem: Problem;
  /** The slug of `urn:storyline:problem:<slug>`, e.g. `draining`, `unconfirmed`, `rate-limited`, `idempotency-key-mismatch`. */
  readonly problemType: string;
  readonly retryAfterMs: number | null;
}

export class NetworkError extends StorylineError {}

export interface SseFrame {
  type: string;
  data: string;
  lastEventId: string;
}

export class SseParser {
  constructor(handlers?: {
    onEvent?: (frame: SseFrame) => void;
    onId?: (lastEventId: string) => void;
    onRetry?: (ms: number) => void;
    onComment?: (text: string) => void;
  });
  push(text: string): void;
  end(): void;
}

export function backoffDelay(attempt: number, backoff?: Backoff, random?: () => number): number;
export function retryAfterDelay(retryAfterMs: number, random?: () => number): number;
export function parseRetryAfter(value: string | null | undefined, now?: number): number | null;
export function compareIds(a: string, b: string): number;
