-- Helpers shared by the store's scripts; scripts.rs prepends this file to each of them.
--
-- A conversation is a HASH: t1..t5 (the constant JSON pieces made by codec.rs), st
-- (status), ua (updatedAt, formatted), q (qualified), lm (last message JSON or null),
-- seq (last message id), lcm/lca (last createdAt in ms / formatted), um (updated ms, the
-- list order), ver (bumped when t1..t5 change).

local CONV_FIELDS = {'t1', 't2', 't3', 't4', 't5', 'st', 'ua', 'q', 'lm', 'seq', 'lcm', 'lca', 'um', 'ver'}

-- Integers are formatted explicitly: Lua's default number formatting switches to an
-- exponent beyond 14 digits.
local function int(n)
  return string.format('%d', n)
end

local function load_conv(key)
  local v = redis.call('HMGET', key, unpack(CONV_FIELDS))
  if not v[1] then
    return nil
  end
  return {
    t1 = v[1], t2 = v[2], t3 = v[3], t4 = v[4], t5 = v[5], st = v[6], ua = v[7], q = v[8], lm = v[9],
    seq = tonumber(v[10]), lcm = tonumber(v[11]), lca = v[12], um = tonumber(v[13]), ver = v[14],
  }
end

-- Byte for byte what serde produces (codec.rs checks the pieces).
local function conv_json(c)
  return c.t1 .. c.st .. c.t2 .. c.ua .. c.t3 .. c.q .. c.t4 .. c.lm .. c.t5
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
  redis.call('PUBLISH', chan, 'e|' .. int(off) .. '|' .. int(now) .. '|' .. int(#kind) .. '|' .. kind .. data)
  trim(meta, log, off, now, min_events, min_age, 4)
  return off
end
