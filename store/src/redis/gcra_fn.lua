-- GCRA, the same arithmetic as ratelimit::gcra (µs), shared by gcra.lua
-- (RateLimiter::check_all) and append.lua (a visitor message charged in its own commit).
-- Each key holds its theoretical arrival time (TAT) and expires at it: an expired key and a
-- TAT in the past mean the same thing.

-- One step on a stored TAT (false/nil: none): the new TAT, or nil and the wait in ms.
local function gcra_step(stored, limit, window_ms, now_ms)
  if limit == 0 then
    return nil, math.max(window_ms, 1000)
  end
  local now_us = now_ms * 1000
  local window_us = window_ms * 1000
  local interval = math.max(math.floor(window_us / limit), 1)
  local tat = now_us
  if stored then
    tat = math.max(tonumber(stored), now_us)
  end
  local new_tat = tat + interval
  if new_tat - now_us > window_us then
    return nil, math.floor((new_tat - window_us - now_us + 999) / 1000)
  end
  return new_tat, 0
end

-- Checks n limits at once without writing: KEYS[k0 + i] with limit ARGV[a0 + 2i - 1] and
-- window_ms ARGV[a0 + 2i]. Returns the new TATs when every limit allows the request, else
-- nil, the longest wait (ms) and the 1-based index of the limit that refused (the first
-- with that wait).
local function gcra_check(k0, a0, n, now_ms)
  local tats, wait_ms, refused = {}, 0, 0
  for i = 1, n do
    local tat, wait = gcra_step(redis.call('GET', KEYS[k0 + i]), tonumber(ARGV[a0 + 2 * i - 1]),
      tonumber(ARGV[a0 + 2 * i]), now_ms)
    if not tat and wait > wait_ms then
      wait_ms, refused = wait, i
    end
    tats[i] = tat
  end
  if wait_ms > 0 then
    return nil, wait_ms, refused
  end
  return tats
end

-- Takes one unit of each limit gcra_check allowed: stores the new TATs, each expiring at itself.
local function gcra_take(k0, tats, now_ms)
  local now_us = now_ms * 1000
  for i, tat in ipairs(tats) do
    local ttl_ms = math.max(math.ceil((tat - now_us) / 1000), 1)
    redis.call('SET', KEYS[k0 + i], string.format('%d', tat), 'PX', string.format('%d', ttl_ms))
  end
end
