-- messages() with a time cursor: the messages whose (createdAt, id) is after
-- (created_ms, after_id). Ids are 1..last and (createdAt, id) increases with the id
-- (createdAt never decreases), so a binary search over ids finds the first one:
-- O(log² n), with no second index to keep.
-- KEYS: msgs
-- ARGV: created_ms, after_id, count
local c, after, count = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tail = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if not tail[1] then
  return {}
end
local last = split_id(tail[1][1])
local lo, hi = 1, last + 1
while lo < hi do
  local mid = math.floor((lo + hi) / 2)
  local e = redis.call('XRANGE', KEYS[1], int(mid), int(mid))
  if not e[1] then
    return redis.error_reply('confab: message ' .. int(mid) .. ' is missing')
  end
  local seq, created = split_id(e[1][1])
  if created > c or (created == c and seq > after) then
    hi = mid
  else
    lo = mid + 1
  end
end
if lo > last then
  return {}
end
return redis.call('XRANGE', KEYS[1], int(lo), '+', 'COUNT', count)
