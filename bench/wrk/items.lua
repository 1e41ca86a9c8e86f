-- wrk script for the benchmark: GET /items/<n>, n cycling over 1..1000 so
-- that routing and JSON work on varying input, and one JSON line at the end
-- (prefixed BENCH_JSON) for bench/lib/load.js to parse. Latencies in µs.
local counter = 0

request = function()
  counter = counter + 1
  return wrk.format("GET", "/items/" .. (counter % 1000 + 1))
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
