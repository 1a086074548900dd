-- claim_reply: leases an owed reply to a holder.
-- KEYS: owed (HASH), owed:due (ZSET)
-- ARGV: conv_id ('' = any that is due), holder, now, lease_ms
-- Returns {} | {conv_id, through_seq}.
local id, holder, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
if id == '' then
  local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3], 'LIMIT', 0, 1)
  if not due[1] then
    return {}
  end
  id = due[1]
end
local rec = redis.call('HGET', KEYS[1], id)
local until_ms = tonumber(redis.call('ZSCORE', KEYS[2], id) or '-1')
if not rec or until_ms < 0 then
  return {}
end
local through, owner = string.match(rec, '^(%d+)|(.*)$')
if until_ms > now and owner ~= holder then
  return {}
end
redis.call('HSET', KEYS[1], id, through .. '|' .. holder)
redis.call('ZADD', KEYS[2], int(now + tonumber(ARGV[4])), id)
return {id, through}
