-- storyline: a page of a story's log together with what retention removed, in one atomic step, so a reader can
-- tell "nothing after my position was trimmed" from "events after my position are gone" (a gap).
-- KEYS[1] stream, KEYS[2] metadata hash (same hash tag).
-- ARGV[1] XRANGE start (exclusive: "(<id>"), ARGV[2] count.
-- Returns {trimmed_through or "", oldest retained id or "", [[id, fields], ...]}.
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
local trimmed = redis.call('HGET', KEYS[2], 'trimmed_through') or ''
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local oldest = ''
if first[1] then oldest = first[1][1] end
return {trimmed, oldest, entries}
