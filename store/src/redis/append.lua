-- append_message / append_message_limited: the whole commit of one message, and its rate
-- limits, in one round trip (see append_fn.lua).
-- KEYS and ARGV: append_fn.lua's, then the L limit keys (KEYS[10 + N + i], N attachments);
-- ARGV[19 + N] = L, ARGV[20 + N] = the limits' now_ms, then (limit, window_ms) per key.
-- Returns {'none'} | append_message's answer.
local c = load_conv(KEYS[1])
if not c then
  return {'none'}
end
local natt = tonumber(ARGV[18])
local limits = {k0 = 10 + natt, a0 = 20 + natt, n = tonumber(ARGV[19 + natt] or '0'),
  now_ms = tonumber(ARGV[20 + natt] or '0')}
return append_message(c, limits)
