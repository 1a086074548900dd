-- start_conversation: visitor, conversation, list entry, `conversation:new`.
-- KEYS: visitors, conv, list:open, meta, log
-- ARGV: token_hash, visitor_id, conv_id, handler, now, now_fmt, min_events, min_age, tenant_chan, t1..t9
local now = tonumber(ARGV[5])
local c = {st = 'open', ua = ARGV[6], q = 'false', lm = 'null', h = ARGV[4], vr = 'null', ar = 'null', ur = '0'}
local args = pieces(c, 10)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. ARGV[3])
redis.call('HSET', KEYS[2], 'st', c.st, 'ua', c.ua, 'q', c.q, 'lm', c.lm, 'h', c.h, 'vr', c.vr, 'ar', c.ar,
  'ur', c.ur, 'vrs', '0', 'ars', '0', 'seq', '0', 'lcm', '0', 'lca', '', 'um', int(now), 'ver', '1', unpack(args))
redis.call('ZADD', KEYS[3], 0, list_member(now, ARGV[3]))
return append_event(KEYS[4], KEYS[5], ARGV[9], now, 'conversation:new', conv_json(c),
  tonumber(ARGV[7]), tonumber(ARGV[8]))
