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
  ones that share what is left);
- `u:<holder>`: the holder's last grant here, "<ask id> <requests> <input> <output> <concurrent>",
  so that a grant whose answer was lost can be undone rather than held for as long as the holder
  lives.

KEYS[1] is the counter. ARGV: op, holder, holder_ttl, the six limits (requests, tokens, input,
output per minute, concurrent, tokens per day; 0 is unlimited), then per op:
- `ask`: need then want (requests, input tokens, output tokens, concurrent), then the ask's id;
- `give`: units given back (the same four);
- `undo`: an ask's id: if it was this holder's last granted ask here, what it granted comes back
  (the caller never learnt of the grant: its reply was lost, or its batch failed elsewhere);
- `charge`: input and output tokens beyond (or, negative, short of) what was taken;
- `drop`: the holder's holdings are freed; `touch`: its holding's expiry is renewed;
- `state`: nothing is written.

The reply is REPLY_LENGTH integers: granted requests, input, output, concurrent; retry_after in ms;
what remains of requests, tokens, input, output per minute, of concurrency and of the day's budget
(floored, possibly below zero; 0 where unlimited); ms until each per-minute bucket (requests,
tokens, input, output) is full; ms until 00:00 UTC; the concurrency units the holder holds now;
and the script's clock, in microseconds.

A grant follows the ledger's rule (llmrelay/limits/ledger.py): all of `need` or nothing (token needs
clamped to each dimension's capacity), and of `want` at most `floor(available / (2 * active
holders))` per dimension, never less than `need`.
"""

from __future__ import annotations

REPLY_LENGTH = 18

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
local EPSILON = 1e-9  -- float refills: a bucket refilled to 9.999999999 of 10 is full

local clock = redis.call('TIME')
local now_us = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local now = now_us / 1000000
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
    if v == nil then v = cap[d] else v = math.min(cap[d], v + elapsed * (cap[d] / 60)) end
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
-- A grant's record outlives neither its holder's holding nor its holder's activity.
for f, _ in pairs(h) do
  if string.sub(f, 1, 2) == 'u:' then
    local who = string.sub(f, 3)
    if h['h:' .. who] == nil and h['a:' .. who] == nil then removed[#removed + 1] = f end
  end
end
for _, f in ipairs(removed) do h[f] = nil end
local mine = tonumber(h['h:' .. holder] or '') or 0
local set = {}
local function put(f, v) set[#set + 1] = f; set[#set + 1] = string.format('%.17g', v) end
local function del(f) removed[#removed + 1] = f end
local function give(units)
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
end

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
      local deficit = math.min(need[d], cap[d]) - level[d]
      if deficit > EPSILON then short(deficit * 60 / cap[d]) end
    end
  end
  if day_limit > 0 and need.t > 0 and day_limit - day_used < math.min(need.t, day_limit) then short(to_midnight) end
  if conc_limit > 0 and need.c > 0 and need.c > conc_limit - held then short(1.0) end
  if not refused then
    -- Active holders: those granted units within 60 s, counting the one asking now.
    local active = askers
    if h['a:' .. holder] == nil then active = active + 1 end
    local split = 2 * active
    local function sized(limited, available, least, most)
      if not limited then return most end
      return math.max(least, math.min(most, math.floor(available / split)))
    end
    granted.r = sized(cap.r > 0, level.r, need.r, want.r)
    granted.i = sized(cap.i > 0, level.i, need.i, want.i)
    granted.o = sized(cap.o > 0, level.o, need.o, want.o)
    granted.c = sized(conc_limit > 0, conc_limit - held, need.c, want.c)
    -- Limits on input + output: beyond the need, both extras shrink in proportion.
    local total = math.huge
    if cap.t > 0 then total = math.min(total, math.max(0, math.floor(level.t / split))) end
    if day_limit > 0 then total = math.min(total, math.max(0, math.floor((day_limit - day_used) / split))) end
    local extra_i, extra_o = granted.i - need.i, granted.o - need.o
    if granted.i + granted.o > total and extra_i + extra_o > 0 then
      local room = math.max(0, total - need.i - need.o)
      local give_i = math.min(extra_i, math.floor(room * extra_i / (extra_i + extra_o)))
      granted.i = need.i + give_i
      granted.o = need.o + math.min(extra_o, room - give_i)
    end
    local tokens = granted.i + granted.o
    if cap.r > 0 then level.r = level.r - granted.r end
    if cap.t > 0 then level.t = level.t - tokens end
    if cap.i > 0 then level.i = level.i - granted.i end
    if cap.o > 0 then level.o = level.o - granted.o end
    if day_limit > 0 then day_used = day_used + tokens end
    if conc_limit > 0 then mine = mine + granted.c; held = held + granted.c end
    put('a:' .. holder, now)
    set[#set + 1] = 'u:' .. holder
    set[#set + 1] = table.concat({ARGV[18] or '', granted.r, granted.i, granted.o, granted.c}, ' ')
  end
elseif op == 'give' then
  give({r = n(10), i = n(11), o = n(12), c = n(13)})
elseif op == 'undo' then
  -- The ask ARGV[10] of this holder ran but its answer never reached the caller: give it back.
  local record = {}
  for word in string.gmatch(h['u:' .. holder] or '', '%S+') do record[#record + 1] = word end
  if record[1] == ARGV[10] and #record == 5 then
    give({r = tonumber(record[2]), i = tonumber(record[3]), o = tonumber(record[4]), c = tonumber(record[5])})
    del('u:' .. holder)
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
  del('u:' .. holder)
end

-- Write back (a state read writes nothing; drop, touch and undo never create a counter).
local counts = op == 'ask' or op == 'give' or op == 'charge' or (op == 'undo' and exists)
if counts or ((op == 'drop' or op == 'touch') and exists) then
  local ttl = 120
  if counts then
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
  if conc_limit > 0 or op == 'drop' or op == 'touch' or op == 'undo' then
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
  if counts then
    redis.call('PEXPIRE', key, math.ceil(ttl * 1000))
  elseif redis.call('EXISTS', key) == 1 and redis.call('PTTL', key) < ttl * 1000 then
    redis.call('PEXPIRE', key, math.ceil(ttl * 1000))
  end
end

local function left(d) if cap[d] > 0 then return math.floor(level[d] + EPSILON) end return 0 end
local function full_in(d)
  if cap[d] > 0 and cap[d] - level[d] > EPSILON then return math.ceil((cap[d] - level[d]) * 60000 / cap[d]) end
  return 0
end
local conc_left = 0
if conc_limit > 0 then conc_left = conc_limit - held end
local day_left = 0
if day_limit > 0 then day_left = math.floor(day_limit - day_used) end
return {granted.r, granted.i, granted.o, granted.c, math.ceil(wait * 1000),
        left('r'), left('t'), left('i'), left('o'), conc_left, day_left,
        full_in('r'), full_in('t'), full_in('i'), full_in('o'), math.ceil(to_midnight * 1000), mine, now_us}
"""
