-- storyline: idempotent append with batched retention trimming, as one atomic step.
--
-- KEYS[1]  the story's stream           storyline:{<story>}:log
-- KEYS[2]  the story's metadata hash    storyline:{<story>}:meta
-- KEYS[3]  optional idempotency key     storyline:{<story>}:idem:<key>
-- All keys carry the story's hash tag, so the script is valid on Redis Cluster.
--
-- ARGV[1]  max events to retain (N)
-- ARGV[2]  trim slack (S): the log grows to N + S before it is trimmed back to N, so trimming costs O(1)
--          amortised per append
-- ARGV[3]  how long the idempotency key is remembered, milliseconds (the window, or the story TTL if shorter)
-- ARGV[4]  receipt suffix "<type> <ts>", remembered with the id under the idempotency key
-- ARGV[5]  max age in milliseconds, or 0 for no age limit
-- ARGV[6]  the request's fingerprint (64 hex digits), remembered after the receipt; "" without a key
-- ARGV[7]  story TTL in milliseconds, or 0 for none: the stream, its metadata and its idempotency keys expire
--          together that long after the story's last append
-- ARGV[8..] the entry's field/value pairs
--
-- Returns {1, id} for a new event; {0, "<id> <type> <ts> <fingerprint>"} when the idempotency key was seen
-- before with this fingerprint (a record written before fingerprints existed has none, and counts as a match);
-- {2, record} when it was seen with another fingerprint (the key reused for a different request): nothing stored.
-- The script runs atomically, so a concurrent append with the same key is answered after this one, never
-- "in flight".
--
-- Why trim here rather than with XADD MAXLEN ~: Redis does not record which ids approximate trimming removed
-- (XINFO's max-deleted-entry-id stays 0-0), and readers must be able to tell a resume point that fell out of the
-- log from one that did not. Trimming with XTRIM MINID after reading the doomed ids lets us store the newest
-- trimmed id exactly ("trimmed_through").

local stream, meta, idem = KEYS[1], KEYS[2], KEYS[3]

if idem then
  local prior = redis.call('GET', idem)
  if prior then
    local recorded = string.match(prior, '^%S+ %S+ %S+ (%S+)$')
    if recorded and recorded ~= ARGV[6] then
      return {2, prior}
    end
    return {0, prior}
  end
end

local ttl = tonumber(ARGV[7])
-- A new story, or one whose keys expired: checked before XADD creates the stream.
local fresh_story = ttl > 0 and redis.call('EXISTS', stream) == 0

local id = redis.call('XADD', stream, '*', unpack(ARGV, 8))

if idem then
  redis.call('SET', idem, id .. ' ' .. ARGV[4] .. ' ' .. ARGV[6], 'PX', ARGV[3])
end

if fresh_story then
  -- Whatever this story held before this id (a life that expired) is unknown: record it as trimmed, so a reader
  -- resuming from an id of that life is told of a gap. The stream is new, so XADD chose <now>-0, and the id just
  -- before it is <now - 1>-<max seq>.
  local ms = tonumber(string.match(id, '^(%d+)-'))
  if ms > 0 then
    redis.call('HSET', meta, 'trimmed_through', string.format('%d-18446744073709551615', ms - 1))
  end
end

-- Age: drop entries whose time (the ms part of the id) is older than the new entry's time minus max age.
-- Redis's clock assigned the new id, so no other clock is involved. One XREVRANGE finds the newest doomed id.
local max_age = tonumber(ARGV[5])
if max_age > 0 then
  local cutoff = tonumber(string.match(id, '^(%d+)-')) - max_age
  if cutoff > 0 then
    local cutoff_id = string.format('%d-0', cutoff)
    local doomed = redis.call('XREVRANGE', stream, '(' .. cutoff_id, '-', 'COUNT', 1)
    if doomed[1] then
      redis.call('XTRIM', stream, 'MINID', cutoff_id)
      redis.call('HSET', meta, 'trimmed_through', doomed[1][1])
    end
  end
end

-- Count: trimmed after age, so a count trim records the newer trimmed id.
local max, slack = tonumber(ARGV[1]), tonumber(ARGV[2])
local len = redis.call('XLEN', stream)
if len > max + slack then
  -- The first len - max entries go; the one after them is the new oldest.
  local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', len - max + 1)
  redis.call('XTRIM', stream, 'MINID', head[#head][1])
  redis.call('HSET', meta, 'trimmed_through', head[#head - 1][1])
end

if ttl > 0 then
  -- The story's keys expire together, a TTL after this append. Idempotency keys were stored with PX at most the
  -- TTL, so none outlives the stream: a later life of the story never answers with a receipt of this one.
  redis.call('PEXPIRE', stream, ttl)
  redis.call('PEXPIRE', meta, ttl)
end

return {1, id}
