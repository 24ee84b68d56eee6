// Helpers shared by the k6 scripts: environment variables read strictly, and what storyline's refusals say.

// The variable's value; its default when unset; an error naming it when unset without a default.
export function env(name, fallback) {
  const value = __ENV[name];
  if (value !== undefined && value !== '') return value;
  if (fallback !== undefined) return fallback;
  throw new Error(`${name} is required`);
}

export function envNumber(name, fallback) {
  const text = env(name, String(fallback));
  const value = Number(text);
  if (!Number.isFinite(value) || value < 0) throw new Error(`${name}=${text} is not a non-negative number`);
  return value;
}

// A 503 whose problem type is `unconfirmed`: the append may have been stored; retry with the same key.
export function isUnconfirmed(response) {
  if (response.status !== 503) return false;
  try {
    return response.json('type') === 'urn:storyline:problem:unconfirmed';
  } catch (_) {
    return false;
  }
}

// Seconds to wait before a retry: the answer's Retry-After, else 1.
export function retryAfterSecs(response) {
  const value = Number(response.headers['Retry-After']);
  return Number.isFinite(value) && value > 0 ? value : 1;
}
