-- append_event: a custom event, optionally about a conversation that must exist.
-- KEYS: meta, log, conv (checked only when ARGV[3] is '1')
-- ARGV: kind, data, check_conv, now, min_events, min_age, tenant_chan
-- Returns {'none'} | {'ok', offset}.
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[3]) == 0 then
  return {'none'}
end
local off = append_event(KEYS[1], KEYS[2], ARGV[7], tonumber(ARGV[4]), ARGV[1], ARGV[2],
  tonumber(ARGV[5]), tonumber(ARGV[6]))
return {'ok', off}
