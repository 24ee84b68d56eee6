-- storyline: one GCRA rate-limit decision (the generic cell rate algorithm), atomically, shared by every instance.
-- KEYS[1] the subject's bucket: its theoretical arrival time (TAT), microseconds since the epoch.
-- ARGV[1] emission interval (1 / rate), microseconds; ARGV[2] burst (requests admitted at once).
-- Returns {1, 0} when admitted (the TAT moves one interval on), {0, wait} when refused (nothing changes; `wait`
-- microseconds until the next request would be admitted).
-- The clock is the server's (TIME), so instances with skewed clocks still share one budget. Lua numbers are
-- doubles: microseconds since the epoch (about 2^51) stay exact.
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if now < allow_at then
  return {0, allow_at - now}
end
-- The bucket is back at a full burst once now passes new_tat: it can expire then.
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0}
