-- mark_read: moves a read cursor forward; `conversation:read` to the tenant and the visitor.
-- KEYS: conv, msgs, meta, log
-- ARGV: conv_id, reader ('visitor' | 'agent'), seq, message_id, now, min_events, min_age, conv_chan, tenant_chan
-- Returns {'none'} | {'nosuch'} | {'same', conversation_json} | {'moved', conversation_json}.
local id, reader, seq, mid, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local c = load_conv(KEYS[1])
if not c then
  return {'none'}
end
if seq < 1 or seq > c.seq then
  return {'nosuch'}
end
local cur = reader == 'visitor' and c.vrs or c.ars
if seq <= cur then
  return {'same', conv_json(c)}
end
if reader == 'visitor' then
  c.vr = '"' .. mid .. '"'
  redis.call('HSET', KEYS[1], 'vr', c.vr, 'vrs', int(seq))
else
  -- Visitor messages after the cursor. `direction` is the third field of a message, after
  -- two ids of ours, so its first occurrence is the field (domain.rs: is_inbound_json).
  local unread = 0
  for _, e in ipairs(redis.call('XRANGE', KEYS[2], int(seq + 1), '+')) do
    local json = e[2][2]
    local _, d = string.find(json, '"direction":"', 1, true)
    if d and string.sub(json, d + 1, d + 7) == 'inbound' then
      unread = unread + 1
    end
  end
  c.ar, c.ur = '"' .. mid .. '"', int(unread)
  redis.call('HSET', KEYS[1], 'ar', c.ar, 'ars', int(seq), 'ur', c.ur)
end
-- ReadEvent's fields in declaration order; every value is ours (no escaping needed).
local data = '{"conversationId":"' .. id .. '","reader":"' .. reader .. '","messageId":"' .. mid ..
  '","unreadByAgent":' .. c.ur .. '}'
append_event(KEYS[3], KEYS[4], ARGV[9], now, 'conversation:read', data, tonumber(ARGV[6]), tonumber(ARGV[7]))
redis.call(PUB, ARGV[8], 'r|' .. data)
return {'moved', conv_json(c)}
