-- RateLimiter::check / check_all: GCRA, the same arithmetic as ratelimit::gcra (µs), over
-- one or more keys at once, all or nothing: either every key allows the request and each
-- takes one unit, or nothing is taken and the longest wait is returned.
-- Each key holds its theoretical arrival time and expires at it: an expired key and a
-- TAT in the past mean the same thing.
-- KEYS: the limiter keys
-- ARGV: now_ms, then (limit (> 0), window_ms) for each key, in KEYS order
-- Returns {1, 0, 0} (allowed) | {0, retry_after_ms, index of the key that refused (1-based;
-- the longest wait when several did)}.
local now_ms = tonumber(ARGV[1])
local now_us = now_ms * 1000
local new_tats, wait_ms, refused = {}, 0, 0
for i = 1, #KEYS do
  local limit, window_ms = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local window_us = window_ms * 1000
  local interval = math.max(math.floor(window_us / limit), 1)
  local tat = now_us
  local stored = redis.call('GET', KEYS[i])
  if stored then
    tat = math.max(tonumber(stored), now_us)
  end
  local new_tat = tat + interval
  if new_tat - now_us > window_us then
    local wait = math.floor((new_tat - window_us - now_us + 999) / 1000)
    if wait > wait_ms then
      wait_ms, refused = wait, i
    end
  end
  new_tats[i] = new_tat
end
if wait_ms > 0 then
  return {0, wait_ms, refused}
end
for i = 1, #KEYS do
  local ttl_ms = math.max(math.ceil((new_tats[i] - now_us) / 1000), 1)
  redis.call('SET', KEYS[i], string.format('%d', new_tats[i]), 'PX', string.format('%d', ttl_ms))
end
return {1, 0, 0}
