-- update_profile: replaces the constant pieces, if nobody else did since they were read.
-- KEYS: conv, list:open, list:closed, meta, log
-- ARGV: conv_id, expected_ver, t1, t2, t3, t4, t5, now, now_fmt, min_events, min_age, conv_chan, tenant_chan
-- Returns {'none'} | {'conflict'} | {'ok', conversation_json}.
local id, now = ARGV[1], tonumber(ARGV[8])
local c = load_conv(KEYS[1])
if not c then
  return {'none'}
end
if c.ver ~= ARGV[2] then
  return {'conflict'}
end
relist({open = KEYS[2], closed = KEYS[3]}, id, c.st, c.um, c.st, now)
c.t1, c.t2, c.t3, c.t4, c.t5, c.ua, c.um = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[9], now
redis.call('HSET', KEYS[1], 't1', c.t1, 't2', c.t2, 't3', c.t3, 't4', c.t4, 't5', c.t5, 'ua', c.ua,
  'um', int(now), 'ver', int(tonumber(c.ver) + 1))
local cj = conv_json(c)
append_event(KEYS[4], KEYS[5], ARGV[13], now, 'conversation:updated', cj, tonumber(ARGV[10]), tonumber(ARGV[11]))
redis.call('PUBLISH', ARGV[12], 'u|' .. cj)
return {'ok', cj}
