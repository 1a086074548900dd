-- RateLimiter::check: one GCRA step, the same arithmetic as ratelimit::gcra (µs).
-- The key holds the theoretical arrival time and expires at it: an expired key and a
-- TAT in the past mean the same thing.
-- KEYS: the limiter key
-- ARGV: limit (> 0), window_ms, now_ms
-- Returns {1, 0} (allowed) | {0, retry_after_ms}.
local limit, window_ms, now_ms = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now_us = now_ms * 1000
local window_us = window_ms * 1000
local interval = math.max(math.floor(window_us / limit), 1)
local tat = now_us
local stored = redis.call('GET', KEYS[1])
if stored then
  tat = math.max(tonumber(stored), now_us)
end
local new_tat = tat + interval
if new_tat - now_us > window_us then
  local wait_us = new_tat - window_us - now_us
  return {0, math.floor((wait_us + 999) / 1000)}
end
local ttl_ms = math.max(math.ceil((new_tat - now_us) / 1000), 1)
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', string.format('%d', ttl_ms))
return {1, 0}
