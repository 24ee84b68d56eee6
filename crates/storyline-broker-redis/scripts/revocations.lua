-- storyline: the revocations in force and the version they were read at, in one round trip.
-- KEYS[1] the list (sorted set, score = until), KEYS[2] its version counter (same hash tag). ARGV[1] now.
-- Returns {version or "0", {member, until, member, until, ...}} with until > now.
local version = redis.call('GET', KEYS[2]) or '0'
local entries = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'WITHSCORES')
return {version, entries}
