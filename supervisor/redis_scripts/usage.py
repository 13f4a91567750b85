"""The usage script: a batch of usage increments applied at once.

KEYS[1] is the usage hash; ARGV holds pairs of field and increment. One script (not a pipeline of
HINCRBY) so that a batch is applied whole or not at all, never half counted when the connection
breaks in the middle of it. (A reply lost after the script ran is the one case where a batch sent
again counts twice.) Returns the number of fields incremented.
"""

from __future__ import annotations

USAGE_LUA = r"""
local count = 0
for n = 1, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[n], ARGV[n + 1])
  count = count + 1
end
return count
"""
