-- Admission of a call with no breaker, or whose breaker needs nothing from Redis
-- (the worker's mirror reads it closed): its limits alone, with no breaker code
-- loaded. KEYS and ARGV: spend_limits's (_common.lua).
-- Returns admit.lua's reply without the breaker's state.
local refused, a = spend_limits()
if refused then return refused end
return {ADMITTED, a.remaining, 0, a.next_after, a.reset_after, 0, '', unpack(a.extra)}
