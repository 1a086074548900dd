-- RateLimiter::check / check_all: GCRA (gcra_fn.lua) over one or more keys at once, all or
-- nothing: either every key allows the request and each takes one unit, or nothing is
-- taken and the longest wait is returned.
-- KEYS: the limiter keys
-- ARGV: now_ms, then (limit, window_ms) for each key, in KEYS order
-- Returns {1, 0, 0} (allowed) | {0, retry_after_ms, index of the key that refused (1-based;
-- the longest wait when several did)}.
local now_ms = tonumber(ARGV[1])
local tats, wait_ms, refused = gcra_check(0, 1, #KEYS, now_ms)
if not tats then
  return {0, wait_ms, refused}
end
gcra_take(0, tats, now_ms)
return {1, 0, 0}
