-- maintain: retention for one tenant log, at most `budget` events per call.
-- KEYS: meta, log
-- ARGV: now, min_events, min_age, budget
-- Returns how many events were dropped.
local last = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
return trim(KEYS[1], KEYS[2], last, tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
