"""The counter script: one rate-limit counter (one rule, one value of its `per`) in one Redis hash.

The arithmetic is `llmrelay.limits.types`' (the same as the supervisor's in-memory ledger), run inside
Redis so that every machine sees one counter and one clock (`TIME`, never the callers' clocks).

Hash fields:
- `ts`: when the buckets were last refilled (seconds, Redis time);
- `b:r`, `b:t`, `b:i`, `b:o`: the per-minute buckets' levels (requests, tokens, input tokens, output
  tokens; only the limited ones), refilled continuously at limit/60 per second, below zero after a
  charge larger than what was left;
- `d:day`, `d:used`: the UTC day number and the tokens used of that day's budget;
- `h:<holder>`, `x:<holder>`: concurrency units a holder holds, and when its holding expires unless
  the holder is heard from again (every script that sees an expired holding deletes it: a machine
  that died frees its share by itself);
- `a:<holder>`: when a holder was last granted units (holders granted within 60 s are the active
  ones that share what is left).

KEYS[1] is the counter. ARGV: op, holder, holder_ttl, the six limits (requests, tokens, input,
output per minute, concurrent, tokens per day; 0 is unlimited), then per op:
- `ask`: need then want (requests, input tokens, output tokens, concurrent);
- `give`: units given back (the same four);
- `charge`: input and output tokens beyond (or, negative, short of) what was taken;
- `drop`: the holder's holdings are freed; `touch`: its holding's expiry is renewed;
- `state`: nothing is written.

The reply is REPLY_LENGTH integers: granted requests, input, output, concurrent; retry_after in ms;
what remains of requests, tokens, input, output per minute, of concurrency and of the day's budget
(floored; 0 where unlimited); ms until the request bucket and until the token buckets are full; and
the concurrency units the holder holds now.
"""

from __future__ import annotations

REPLY_LENGTH = 14

COUNTER_LUA = r"""
if redis.replicate_commands then pcall(redis.replicate_commands) end
local key = KEYS[1]
local op = ARGV[1]
local holder = ARGV[2]
local holder_ttl = tonumber(ARGV[3])
local cap = {r = tonumber(ARGV[4]), t = tonumber(ARGV[5]), i = tonumber(ARGV[6]), o = tonumber(ARGV[7])}
local conc_limit = tonumber(ARGV[8])
local day_limit = tonumber(ARGV[9])
local DIMS = {'r', 't', 'i', 'o'}

local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local today = math.floor(now / 86400)
local to_midnight = (today + 1) * 86400 - now

local exists = redis.call('EXISTS', key) == 1
local h = {}
if exists then
  local raw = redis.call('HGETALL', key)
  for n = 1, #raw, 2 do h[raw[n]] = raw[n + 1] end
end

-- Buckets, refilled to now.
local level = {}
local elapsed = math.max(0, now - (tonumber(h['ts'] or '') or now))
for _, d in ipairs(DIMS) do
  if cap[d] > 0 then
    local v = tonumber(h['b:' .. d] or '')
    if v == nil then v = cap[d] else v = math.min(cap[d], v + elapsed * cap[d] / 60) end
    level[d] = v
  end
end

-- The day's budget.
local day_used = 0
if day_limit > 0 and tonumber(h['d:day'] or '') == today then day_used = tonumber(h['d:used']) or 0 end

-- Holdings and recent askers; expired ones are deleted.
local removed = {}
local held = 0
local askers = 0
local latest_expiry = 0
for f, v in pairs(h) do
  local kind = string.sub(f, 1, 2)
  if kind == 'h:' then
    local who = string.sub(f, 3)
    local expiry = tonumber(h['x:' .. who] or '') or 0
    if expiry < now then
      removed[#removed + 1] = f
      removed[#removed + 1] = 'x:' .. who
    else
      held = held + (tonumber(v) or 0)
      if expiry > latest_expiry then latest_expiry = expiry end
    end
  elseif kind == 'a:' then
    if (tonumber(v) or 0) < now - 60 then removed[#removed + 1] = f else askers = askers + 1 end
  end
end
for _, f in ipairs(removed) do h[f] = nil end
local mine = tonumber(h['h:' .. holder] or '') or 0
local set = {}
local function put(f, v) set[#set + 1] = f; set[#set + 1] = string.format('%.17g', v) end
local function del(f) removed[#removed + 1] = f end

local granted = {r = 0, i = 0, o = 0, c = 0}
local wait = 0
local n = function(i) return math.max(0, math.floor(tonumber(ARGV[i]) or 0)) end

if op == 'ask' then
  local need = {r = n(10), i = n(11), o = n(12), c = n(13)}
  local want = {r = math.max(n(14), need.r), i = math.max(n(15), need.i), o = math.max(n(16), need.o),
                c = math.max(n(17), need.c)}
  need.t = need.i + need.o
  local refused = false
  local function short(w) refused = true; if w > wait then wait = w end end
  for _, d in ipairs(DIMS) do
    if cap[d] > 0 and need[d] > 0 then
      local must = need[d]
      if d ~= 'r' then must = math.min(must, cap[d]) end
      if level[d] < must then short((must - level[d]) * 60 / cap[d]) end
    end
  end
  if day_limit > 0 and need.t > 0 and day_limit - day_used < math.min(need.t, day_limit) then short(to_midnight) end
  if conc_limit > 0 and need.c > 0 and conc_limit - held < need.c then short(1.0) end
  if not refused then
    local active = math.max(1, askers)
    local function share(available, least) return math.max(least, math.floor(available / (2 * active))) end
    granted.r = want.r
    if cap.r > 0 then granted.r = math.min(want.r, share(level.r, need.r)) end
    granted.i = want.i
    if cap.i > 0 then granted.i = math.min(want.i, share(level.i, need.i)) end
    granted.o = want.o
    if cap.o > 0 then granted.o = math.min(want.o, share(level.o, need.o)) end
    granted.c = want.c
    if conc_limit > 0 then granted.c = math.min(want.c, share(conc_limit - held, need.c)) end
    -- Limits on input + output: what is beyond the need is cut from output first, then input.
    local total = nil
    if cap.t > 0 then total = share(level.t, need.t) end
    if day_limit > 0 then
      local budget = share(day_limit - day_used, need.t)
      if total == nil or budget < total then total = budget end
    end
    if total ~= nil and granted.i + granted.o > total then
      local excess = granted.i + granted.o - total
      local cut = math.min(excess, granted.o - need.o)
      granted.o = granted.o - cut
      excess = excess - cut
      granted.i = granted.i - math.min(excess, granted.i - need.i)
    end
    local tokens = granted.i + granted.o
    if cap.r > 0 then level.r = level.r - granted.r end
    if cap.t > 0 then level.t = level.t - tokens end
    if cap.i > 0 then level.i = level.i - granted.i end
    if cap.o > 0 then level.o = level.o - granted.o end
    if day_limit > 0 then day_used = day_used + tokens end
    if conc_limit > 0 then mine = mine + granted.c; held = held + granted.c end
    if granted.r + tokens + granted.c > 0 then put('a:' .. holder, now) end
  end
elseif op == 'give' then
  local units = {r = n(10), i = n(11), o = n(12), c = n(13)}
  units.t = units.i + units.o
  for _, d in ipairs(DIMS) do
    if cap[d] > 0 then level[d] = math.min(cap[d], level[d] + units[d]) end
  end
  if day_limit > 0 then day_used = math.max(0, day_used - units.t) end
  if conc_limit > 0 then
    local back = math.min(mine, units.c)
    mine = mine - back
    held = held - back
  end
elseif op == 'charge' then
  local input = tonumber(ARGV[10]) or 0
  local output = tonumber(ARGV[11]) or 0
  local delta = {r = 0, t = input + output, i = input, o = output}
  for _, d in ipairs(DIMS) do
    if cap[d] > 0 then level[d] = math.min(cap[d], level[d] - delta[d]) end
  end
  if day_limit > 0 then day_used = math.max(0, day_used + delta.t) end
elseif op == 'drop' then
  held = held - mine
  mine = 0
  del('a:' .. holder)
end

-- Write back (a state read writes nothing; drop and touch never create a counter).
if op == 'ask' or op == 'give' or op == 'charge' or ((op == 'drop' or op == 'touch') and exists) then
  local ttl = 120
  if op == 'ask' or op == 'give' or op == 'charge' then
    put('ts', now)
    for _, d in ipairs(DIMS) do
      if cap[d] > 0 then
        put('b:' .. d, level[d])
        ttl = math.max(ttl, (cap[d] - level[d]) * 60 / cap[d] + 60)
      end
    end
    if day_limit > 0 then
      put('d:day', today)
      put('d:used', day_used)
      if day_used > 0 then ttl = math.max(ttl, to_midnight + 60) end
    end
  end
  if conc_limit > 0 or op == 'drop' or op == 'touch' then
    if mine > 0 then
      put('h:' .. holder, mine)
      put('x:' .. holder, now + holder_ttl)
      latest_expiry = math.max(latest_expiry, now + holder_ttl)
    else
      del('h:' .. holder)
      del('x:' .. holder)
    end
  end
  if latest_expiry > 0 then ttl = math.max(ttl, latest_expiry - now + 60) end
  if #removed > 0 then redis.call('HDEL', key, unpack(removed)) end
  if #set > 0 then redis.call('HSET', key, unpack(set)) end
  if op == 'ask' or op == 'give' or op == 'charge' then
    redis.call('PEXPIRE', key, math.ceil(ttl * 1000))
  elseif redis.call('EXISTS', key) == 1 and redis.call('PTTL', key) < ttl * 1000 then
    redis.call('PEXPIRE', key, math.ceil(ttl * 1000))
  end
end

local function left(d) if cap[d] > 0 then return math.floor(level[d]) end return 0 end
local function full_in(d) if cap[d] > 0 then return math.ceil((cap[d] - level[d]) * 60000 / cap[d]) end return 0 end
local conc_left = 0
if conc_limit > 0 then conc_left = conc_limit - held end
local day_left = 0
if day_limit > 0 then day_left = math.floor(day_limit - day_used) end
return {granted.r, granted.i, granted.o, granted.c, math.ceil(wait * 1000),
        left('r'), left('t'), left('i'), left('o'), conc_left, day_left,
        full_in('r'), math.max(full_in('t'), full_in('i'), full_in('o')), mine}
"""
