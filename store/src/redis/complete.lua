-- complete_reply: settles a claimed reply (see append_fn.lua for KEYS and ARGV).
-- ARGV 14-16: holder, claimed through_seq, has_message ('1' | '0')
-- Returns {'lost'} | {'handed'} | {'silent'} | {'att', …} | {'dup', json} | {'ok', seq, created_ms, 0}.
local id = ARGV[1]
local rec = redis.call('HGET', KEYS[8], id)
local through, owner
if rec then
  through, owner = string.match(rec, '^(%d+)|(.*)$')
end
if not rec or owner ~= ARGV[14] then
  return {'lost'}
end
local c = load_conv(KEYS[1])
local result
if not c or c.h ~= 'bot' then
  result = {'handed'}
elseif ARGV[16] == '1' then
  result = append_message(c)
else
  result = {'silent'}
end
if result[1] == 'att' then
  return result
end
if result[1] ~= 'handed' and tonumber(through) > tonumber(ARGV[15]) then
  redis.call('HSET', KEYS[8], id, through .. '|')
  redis.call('ZADD', KEYS[9], 0, id)
else
  redis.call('HDEL', KEYS[8], id)
  redis.call('ZREM', KEYS[9], id)
end
return result
