-- wrk script for the ingress scenario of scripts/bench-peers.sh: POST the same body over and over.
--   WRK_BODY_FILE  file holding the request body
--   WRK_HEADERS    request headers, one "Name: value" per line
--   WRK_JSON       where done() writes the summary as JSON (requests/s, errors, latency percentiles in ms)
local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

wrk.method = "POST"
wrk.body = read_file(os.getenv("WRK_BODY_FILE"))
for line in (os.getenv("WRK_HEADERS") or ""):gmatch("[^\n]+") do
  local name, value = line:match("^([^:]+):%s*(.*)$")
  if name then
    wrk.headers[name] = value
  end
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  local out = string.format(
    '{"requests":%d,"duration_secs":%.3f,"requests_per_sec":%.1f,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_ms":{"mean":%.3f,"p50":%.3f,"p90":%.3f,"p99":%.3f,"p99_9":%.3f,"max":%.3f}}\n',
    summary.requests, secs, summary.requests / secs, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean / 1000, latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency:percentile(99.9) / 1000, latency.max / 1000)
  local path = os.getenv("WRK_JSON")
  if path then
    local f = assert(io.open(path, "w"))
    f:write(out)
    f:close()
  end
  io.write(out)
end
