-- Helpers shared by the store's scripts; scripts.rs prepends this file to each of them.
--
-- A conversation is a HASH: t1..t9 (the constant JSON pieces made by codec.rs) around the
-- slots st (status), ua (updatedAt, formatted), q (qualified), lm (last message JSON or
-- null), h (handler), vr / ar (visitor / agent last read id as JSON: null or "id"), ur
-- (unreadByAgent); vrs / ars (the read cursors' sequence numbers), seq (last message id),
-- lcm/lca (last createdAt in ms / formatted), um (updated ms, the list order), ver (bumped
-- when the pieces change).

local CONV_SLOTS = {'st', 'ua', 'q', 'lm', 'h', 'vr', 'ar', 'ur'}
local CONV_FIELDS = {'t1', 't2', 't3', 't4', 't5', 't6', 't7', 't8', 't9',
  'st', 'ua', 'q', 'lm', 'h', 'vr', 'ar', 'ur', 'vrs', 'ars', 'seq', 'lcm', 'lca', 'um', 'ver'}
-- Conversations stored before the handler and read receipts existed end with t5 = '}'.
-- Their new tail is the same for all of them (no assistant, handler human, nothing read);
-- codec.rs checks these pieces against serde (LEGACY_TAIL).
local LEGACY_TAIL = {',"assistantId":null,"handler":"', '","visitorLastReadId":', ',"agentLastReadId":',
  ',"unreadByAgent":', '}'}

-- Integers are formatted explicitly: Lua's default number formatting switches to an
-- exponent beyond 14 digits.
local function int(n)
  return string.format('%d', n)
end

-- Loads a conversation (nil when absent); upgrades one stored in the old layout in place.
local function load_conv(key)
  local v = redis.call('HMGET', key, unpack(CONV_FIELDS))
  if not v[1] then
    return nil
  end
  local c = {}
  for i, f in ipairs(CONV_FIELDS) do
    c[f] = v[i]
  end
  if not c.t6 then
    c.t5, c.t6, c.t7, c.t8, c.t9 = unpack(LEGACY_TAIL)
    c.h, c.vr, c.ar, c.ur = 'human', 'null', 'null', '0'
    redis.call('HSET', key, 't5', c.t5, 't6', c.t6, 't7', c.t7, 't8', c.t8, 't9', c.t9,
      'h', c.h, 'vr', c.vr, 'ar', c.ar, 'ur', c.ur, 'vrs', '0', 'ars', '0')
  end
  c.seq, c.lcm, c.um = tonumber(c.seq), tonumber(c.lcm), tonumber(c.um)
  c.vrs, c.ars = tonumber(c.vrs or '0'), tonumber(c.ars or '0')
  return c
end

-- Byte for byte what serde produces (codec.rs checks the pieces).
local function conv_json(c)
  local out = {c.t1}
  for i, slot in ipairs(CONV_SLOTS) do
    out[#out + 1] = c[slot]
    out[#out + 1] = c['t' .. (i + 1)]
  end
  return table.concat(out)
end

-- The pieces t1..t9 from ARGV[from..from+8], as HSET arguments too.
local function pieces(c, from)
  local args = {}
  for i = 1, 9 do
    local t = 't' .. i
    c[t] = ARGV[from + i - 1]
    args[#args + 1] = t
    args[#args + 1] = c[t]
  end
  return args
end

-- A conversation's place in its status list: lexical order of the member is the order
-- (updated ms, id), which is what the list cursor compares.
local function list_member(um, id)
  return string.format('%020d', um) .. ':' .. id
end

local function relist(lists, id, old_status, old_um, new_status, new_um)
  redis.call('ZREM', lists[old_status], list_member(old_um, id))
  redis.call('ZADD', lists[new_status], 0, list_member(new_um, id))
end

local function split_id(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end

-- Retention: drops, oldest first and at most `budget` of them, the events that are both
-- beyond the last `min_events` and older than `min_age` ms. Stops at the first event that
-- must stay, so an event younger than min_age is never dropped even if clocks disagree.
local function trim(meta, log, last, now, min_events, min_age, budget)
  local keep_from = last - min_events
  local pruned = tonumber(redis.call('HGET', meta, 'pruned') or '0')
  if keep_from <= pruned then
    return 0
  end
  local cutoff = now - min_age
  local through = nil
  local dropped = 0
  for _, e in ipairs(redis.call('XRANGE', log, '-', '+', 'COUNT', budget)) do
    local off, created = split_id(e[1])
    if off > keep_from or created >= cutoff then
      break
    end
    through = off
    dropped = dropped + 1
  end
  if through then
    redis.call('XTRIM', log, 'MINID', int(through + 1))
    redis.call('HSET', meta, 'pruned', int(through))
  end
  return dropped
end

-- Appends a tenant event and publishes it: stored and published in the same script, so
-- one never happens without the other, and offsets are published in offset order.
local function append_event(meta, log, chan, now, kind, data, min_events, min_age)
  local off = redis.call('HINCRBY', meta, 'offset', 1)
  redis.call('XADD', log, int(off) .. '-' .. int(now), 'k', kind, 'd', data)
  redis.call(PUB, chan, 'e|' .. int(off) .. '|' .. int(now) .. '|' .. int(#kind) .. '|' .. kind .. data)
  trim(meta, log, off, now, min_events, min_age, 4)
  return off
end
