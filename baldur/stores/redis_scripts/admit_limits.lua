-- Admission of a call with no breaker, or whose breaker needs nothing from Redis
-- (the worker's mirror reads it closed): its limits alone, with no breaker code
-- loaded. KEYS and ARGV 1..8: spend_limits's (_common.lua); ARGV 9..11: the advance
-- of the extra limit wanted, the units of an earlier one given back, the TAT they must find.
-- Returns admit.lua's reply without the breaker's state.
local refused, a = spend_limits(tonumber(ARGV[9]), tonumber(ARGV[10]), ARGV[11])
if refused then return refused end
return {ADMITTED, a.remaining, 0, a.next_after, a.reset_after, 0, '', unpack(a.extra)}
