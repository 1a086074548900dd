-- start_conversation: visitor, conversation, list entry, `conversation:new`.
-- KEYS: visitors, conv, list:open, meta, log
-- ARGV: token_hash, visitor_id, conv_id, t1, t2, t3, t4, t5, now, now_fmt, min_events, min_age, tenant_chan
local now = tonumber(ARGV[9])
local c = {
  t1 = ARGV[4], t2 = ARGV[5], t3 = ARGV[6], t4 = ARGV[7], t5 = ARGV[8],
  st = 'open', ua = ARGV[10], q = 'false', lm = 'null',
}
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. ARGV[3])
redis.call('HSET', KEYS[2], 't1', c.t1, 't2', c.t2, 't3', c.t3, 't4', c.t4, 't5', c.t5,
  'st', c.st, 'ua', c.ua, 'q', c.q, 'lm', c.lm, 'seq', '0', 'lcm', '0', 'lca', '', 'um', int(now), 'ver', '1')
redis.call('ZADD', KEYS[3], 0, list_member(now, ARGV[3]))
return append_event(KEYS[4], KEYS[5], ARGV[13], now, 'conversation:new', conv_json(c),
  tonumber(ARGV[11]), tonumber(ARGV[12]))
