-- storyline: the retained range of a story's log, in one round trip.
-- KEYS[1] stream, KEYS[2] metadata hash (same hash tag).
-- Returns {oldest id or "", newest id or "", trimmed_through or ""}.
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local oldest = ''
if first[1] then oldest = first[1][1] end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local newest = ''
if last[1] then newest = last[1][1] end
local trimmed = redis.call('HGET', KEYS[2], 'trimmed_through')
if not trimmed then trimmed = '' end
return {oldest, newest, trimmed}
