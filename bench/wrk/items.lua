-- wrk script for the benchmark: only a done() hook, which runs once at the
-- end. With no request() or response() function wrk sends its one static
-- request (GET /items/123) at full C speed, so the load generator's CPU share
-- stays small and stable; done() adds what `--latency` lacks: p99.9, and one
-- JSON line (prefixed BENCH_JSON) for bench/lib/load.js to parse. Latencies in µs.
--
-- At a steady rate (BENCH_THINK_MS set, by bench/lib/load.js), delay() makes
-- each connection wait a random time, exponential with that mean, between a
-- response and its next request: Poisson arrivals at connections / mean
-- overall. wrk takes whole milliseconds (it truncates), hence the 0.5 that
-- keeps the mean; it measures each latency from the request's send.
local think = tonumber(os.getenv('BENCH_THINK_MS') or '')
if think then
  delay = function() return 0.5 - think * math.log(1 - math.random()) end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.mean))
end
