-- renew_reply: extends the holder's lease.
-- KEYS: owed (HASH), owed:due (ZSET)
-- ARGV: conv_id, holder, until_ms
-- Returns 1 | 0.
local rec = redis.call('HGET', KEYS[1], ARGV[1])
if not rec or string.match(rec, '|(.*)$') ~= ARGV[2] then
  return 0
end
redis.call('ZADD', KEYS[2], 'XX', ARGV[3], ARGV[1])
return 1
