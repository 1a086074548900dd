-- append_message(c, limits): the whole commit of one message to the loaded conversation `c`;
-- shared by the append and complete_reply scripts. `limits` (nil: none) are rate limits
-- charged in the same commit (see gcra_fn.lua): {k0, a0, n, now_ms} as gcra_check takes
-- them. Checked after the idempotency key (a retry of a stored message is answered, and
-- charged nothing, even when limited) and before the attachments; charged with the write.
-- KEYS: conv, msgs, idem, list:open, list:closed, meta, log, owed (HASH), owed:due (ZSET),
--       att-unsent, then one upload hash per attachment
-- ARGV: conv_id, now, now_fmt, m1, m2, m3, idempotency key: author + clientMessageId ('' = none), min_events, min_age,
--       conv_chan, tenant_chan, inbound ('1' | '0'), handler ('' = keep),
--       [complete_reply's holder, claimed through_seq, has_message],
--       message id prefix, attachment count N, then the N attachment ids
-- Returns {'dup', first_message_json} | {'limited', retry_after_ms, index (1-based)} |
--   {'att', index, reason} | {'ok', seq, created_ms, reply_owed (0 | 1)}.
-- A visitor message to a conversation the bot handles makes its reply owed: owed[C] =
-- 'THROUGH|HOLDER' (HOLDER '' = nobody), owed:due[C] = the lease's end (0 = free), kept by
-- a lease already running.
local function append_message(c, limits)
  local id, now, now_fmt, cmid = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[7]
  local min_events, min_age = tonumber(ARGV[8]), tonumber(ARGV[9])
  if cmid ~= '' then
    local first = redis.call('HGET', KEYS[3], cmid)
    if first then
      local e = redis.call('XRANGE', KEYS[2], first, first)
      if not e[1] then
        return redis.error_reply('confab: clientMessageId points at a missing message')
      end
      return {'dup', e[1][2][2]}
    end
  end
  local tats
  if limits and limits.n > 0 then
    local wait, refused
    tats, wait, refused = gcra_check(limits.k0, limits.a0, limits.n, limits.now_ms)
    if not tats then
      return {'limited', wait, refused}
    end
  end
  -- Each attachment must be an unsent upload of this conversation; checked before any write.
  local natt = tonumber(ARGV[18])
  for i = 1, natt do
    local h = redis.call('HMGET', KEYS[10 + i], 'conv', 'msg')
    if not h[1] then
      return {'att', i - 1, 'no such upload'}
    end
    if h[1] ~= id then
      return {'att', i - 1, 'uploaded in another conversation'}
    end
    if h[2] then
      return {'att', i - 1, 'already sent'}
    end
  end
  if tats then
    gcra_take(limits.k0, tats, limits.now_ms)
  end
  local seq = c.seq + 1
  for i = 1, natt do
    redis.call('HSET', KEYS[10 + i], 'msg', ARGV[17] .. int(seq))
    redis.call('ZREM', KEYS[10], ARGV[18 + i])
  end
  local created, created_fmt = now, now_fmt
  if c.lcm > now then
    created, created_fmt = c.lcm, c.lca
  end
  local json = ARGV[4] .. int(seq) .. ARGV[5] .. created_fmt .. ARGV[6]
  redis.call('XADD', KEYS[2], int(seq) .. '-' .. int(created), 'm', json)
  if cmid ~= '' then
    redis.call('HSET', KEYS[3], cmid, int(seq))
  end
  redis.call(PUB, ARGV[10], 'm|' .. int(seq) .. '|' .. json)
  append_event(KEYS[6], KEYS[7], ARGV[11], now, 'message:new', json, min_events, min_age)
  local changed = c.st == 'closed' or (ARGV[13] ~= '' and ARGV[13] ~= c.h)
  relist({open = KEYS[4], closed = KEYS[5]}, id, c.st, c.um, 'open', now)
  c.st, c.ua, c.um, c.lm = 'open', created_fmt, now, json
  if ARGV[12] == '1' then
    c.ur = int(tonumber(c.ur) + 1)
  end
  if ARGV[13] ~= '' then
    c.h = ARGV[13]
  end
  redis.call('HSET', KEYS[1], 'st', c.st, 'ua', c.ua, 'um', int(now), 'lm', json, 'seq', int(seq),
    'lcm', int(created), 'lca', created_fmt, 'ur', c.ur, 'h', c.h)
  if changed then
    local cj = conv_json(c)
    append_event(KEYS[6], KEYS[7], ARGV[11], now, 'conversation:updated', cj, min_events, min_age)
    redis.call(PUB, ARGV[10], 'u|' .. cj)
  end
  local owed = 0
  if ARGV[12] == '1' and c.h == 'bot' then
    owed = 1
    local rec = redis.call('HGET', KEYS[8], id)
    local holder = rec and string.match(rec, '|(.*)$') or ''
    redis.call('HSET', KEYS[8], id, int(seq) .. '|' .. holder)
    redis.call('ZADD', KEYS[9], 'NX', 0, id)
  end
  return {'ok', seq, created, owed}
end
