-- append_message: the whole commit of one message, in one round trip (see append_fn.lua).
-- Returns {'none'} | {'dup', first_message_json} | {'att', index, reason} | {'ok', seq, created_ms, reply_owed}.
local c = load_conv(KEYS[1])
if not c then
  return {'none'}
end
return append_message(c)
