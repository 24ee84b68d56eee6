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
-- ARGV[3]  idempotency window, milliseconds
-- ARGV[4]  receipt suffix "<type> <ts>", remembered with the id under the idempotency key
-- ARGV[5]  max age in milliseconds, or 0 for no age limit
-- ARGV[6..] the entry's field/value pairs
--
-- Returns {1, id} for a new event, or {0, "<id> <type> <ts>"} when the idempotency key was seen before.
--
-- Why trim here rather than with XADD MAXLEN ~: Redis does not record which ids approximate trimming removed
-- (XINFO's max-deleted-entry-id stays 0-0), and readers must be able to tell a resume point that fell out of the
-- log from one that did not. Trimming with XTRIM MINID after reading the doomed ids lets us store the newest
-- trimmed id exactly ("trimmed_through").

local stream, meta, idem = KEYS[1], KEYS[2], KEYS[3]

if idem then
  local prior = redis.call('GET', idem)
  if prior then
    return {0, prior}
  end
end

local id = redis.call('XADD', stream, '*', unpack(ARGV, 6))

if idem then
  redis.call('SET', idem, id .. ' ' .. ARGV[4], 'PX', ARGV[3])
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

return {1, id}
