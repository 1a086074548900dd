-- append_event('conversation:qualified', conversation): sets the flag, the event carries
-- the conversation.
-- KEYS: conv, list:open, list:closed, meta, log
-- ARGV: conv_id, kind, now, now_fmt, min_events, min_age, conv_chan, tenant_chan
-- Returns {'none'} | {'ok', offset, conversation_json}.
local id, now = ARGV[1], tonumber(ARGV[3])
local c = load_conv(KEYS[1])
if not c then
  return {'none'}
end
relist({open = KEYS[2], closed = KEYS[3]}, id, c.st, c.um, c.st, now)
c.q, c.ua, c.um = 'true', ARGV[4], now
redis.call('HSET', KEYS[1], 'q', c.q, 'ua', c.ua, 'um', int(now))
local cj = conv_json(c)
redis.call(PUB, ARGV[7], 'u|' .. cj)
local off = append_event(KEYS[4], KEYS[5], ARGV[8], now, ARGV[2], cj, tonumber(ARGV[5]), tonumber(ARGV[6]))
return {'ok', off, cj}
