-- set_status / set_handler: changes the status and/or the handler; `conversation:updated`
-- when something changed.
-- KEYS: conv, list:open, list:closed, meta, log
-- ARGV: conv_id, status ('' = keep), handler ('' = keep), now, now_fmt, min_events, min_age, conv_chan, tenant_chan
-- Returns {'none'} | {'ok', conversation_json}.
local id, now = ARGV[1], tonumber(ARGV[4])
local status, handler = ARGV[2], ARGV[3]
local c = load_conv(KEYS[1])
if not c then
  return {'none'}
end
if status == '' then
  status = c.st
end
if handler == '' then
  handler = c.h
end
if c.st ~= status or c.h ~= handler then
  relist({open = KEYS[2], closed = KEYS[3]}, id, c.st, c.um, status, now)
  c.st, c.h, c.ua, c.um = status, handler, ARGV[5], now
  redis.call('HSET', KEYS[1], 'st', c.st, 'h', c.h, 'ua', c.ua, 'um', int(now))
  local cj = conv_json(c)
  append_event(KEYS[4], KEYS[5], ARGV[9], now, 'conversation:updated', cj, tonumber(ARGV[6]), tonumber(ARGV[7]))
  redis.call(PUB, ARGV[8], 'u|' .. cj)
  return {'ok', cj}
end
return {'ok', conv_json(c)}
