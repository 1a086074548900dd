-- set_status: changes the status; `conversation:updated` when it changed.
-- KEYS: conv, list:open, list:closed, meta, log
-- ARGV: conv_id, status, now, now_fmt, min_events, min_age, conv_chan, tenant_chan
-- Returns {'none'} | {'ok', conversation_json}.
local id, status, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local c = load_conv(KEYS[1])
if not c then
  return {'none'}
end
if c.st ~= status then
  relist({open = KEYS[2], closed = KEYS[3]}, id, c.st, c.um, status, now)
  c.st, c.ua, c.um = status, ARGV[4], now
  redis.call('HSET', KEYS[1], 'st', c.st, 'ua', c.ua, 'um', int(now))
  local cj = conv_json(c)
  append_event(KEYS[4], KEYS[5], ARGV[8], now, 'conversation:updated', cj, tonumber(ARGV[5]), tonumber(ARGV[6]))
  redis.call('PUBLISH', ARGV[7], 'u|' .. cj)
  return {'ok', cj}
end
return {'ok', conv_json(c)}
