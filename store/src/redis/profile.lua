-- update_profile: replaces the constant pieces, if nobody else did since they were read.
-- KEYS: conv, list:open, list:closed, meta, log
-- ARGV: conv_id, expected_ver, now, now_fmt, min_events, min_age, conv_chan, tenant_chan, t1..t9
-- Returns {'none'} | {'conflict'} | {'ok', conversation_json}.
local id, now = ARGV[1], tonumber(ARGV[3])
local c = load_conv(KEYS[1])
if not c then
  return {'none'}
end
if c.ver ~= ARGV[2] then
  return {'conflict'}
end
relist({open = KEYS[2], closed = KEYS[3]}, id, c.st, c.um, c.st, now)
local args = pieces(c, 9)
c.ua, c.um = ARGV[4], now
redis.call('HSET', KEYS[1], 'ua', c.ua, 'um', int(now), 'ver', int(tonumber(c.ver) + 1), unpack(args))
local cj = conv_json(c)
append_event(KEYS[4], KEYS[5], ARGV[8], now, 'conversation:updated', cj, tonumber(ARGV[5]), tonumber(ARGV[6]))
redis.call(PUB, ARGV[7], 'u|' .. cj)
return {'ok', cj}
