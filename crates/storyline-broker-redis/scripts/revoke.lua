-- storyline: store one revocation and bump the list's version, atomically.
-- KEYS[1] the list (sorted set: member "jti:<id>" or "sub:<id>", score = until, seconds since the epoch),
-- KEYS[2] its version counter (same hash tag).
-- ARGV[1] member, ARGV[2] until, ARGV[3] now.
-- Entries expired at `now` are dropped first (in force means now < until); the list key itself expires with its
-- last entry. Returns the new version.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('EXPIREAT', KEYS[1], last[2])
return redis.call('INCR', KEYS[2])
