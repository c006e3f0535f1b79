-- One batch of state-store operations, run atomically in one round trip.
--
-- Why an interpreter rather than one script per operation: a login request
-- needs several operations (bans, counters, markers) and must not pay one
-- network round trip for each, nor see another request's writes half-way.
-- guard/store/redis.py encodes the batch; this script walks it in order.
--
-- Encoding: ARGV[1] = now (epoch seconds), ARGV[2] = SLICES; then, for each
-- operation, an opcode followed by its arguments.  KEYS holds every key the
-- operations declare, in operation order.  Slice indexes are computed by the
-- client (one floor division, in one language) and arrive as decimal strings.
--
--   op KEYS                        ARGV after the opcode       result
--   h  counter                     slice, amount, pexpire_ms   count after adding
--   c  counter                     slice                       count
--   a  dindex, SLICES hll keys     slice, member, pexpire_ms   distinct count after adding
--   d  SLICES hll keys             -                           distinct count
--   g  kv                          -                           value or nil
--   p  kv                          value, until, pexpire_ms    0
--   n  kv                          value, until, pexpire_ms    1 stored / 0 not
--   t  kv                          -                           value or nil
--   x  kv, counter, dindex         -                           1 deleted / 0 not
--   i  kv                          amount, until, pexpire_ms   new value
--   b  bans                        n, n subjects               n json strings or nil
--   B  bans, bans:exp, bans:ver    subject, json, until        0
--   U  bans, bans:exp, bans:ver    subject                     1 removed / 0 not
--   L  bans, bans:exp, bans:ver    -                           flat subject, json list
--
-- Layouts.  A counter is a hash, one field per slice index.  A distinct set
-- is one HyperLogLog per slice (the union over the window is PFCOUNT of the
-- slice keys) plus an index hash listing which slices exist, so Delete can
-- find them without scanning the keyspace.  A KV entry is a hash {v, e}: the
-- value and its expiry in the client's time, because the engine's clock (not
-- Redis's) decides expiry; PEXPIRE only reclaims memory.  Keys built here from
-- a declared key (index .. ':' .. slice) share its hash tag, hence its slot.

local now = tonumber(ARGV[1])
local S = tonumber(ARGV[2])
local nargs = #ARGV
local out = {}
local k, a, n = 1, 3, 0

-- The value of a KV entry, or false when absent or expired at `now`.
local function live(key)
  local kv = redis.call('HMGET', key, 'v', 'e')
  local e = tonumber(kv[2])
  if kv[1] and e and e > now then
    return kv[1]
  end
  return false
end

-- Sum of the slices of a counter hash inside the window ending at slice `cur`;
-- with `prune`, fields outside the window are deleted on the way.
local function window_sum(key, cur, prune)
  local all = redis.call('HGETALL', key)
  local low = cur - S
  local total = 0
  for i = 1, #all, 2 do
    local s = tonumber(all[i])
    if s > low and s <= cur then
      total = total + tonumber(all[i + 1])
    elseif prune then
      redis.call('HDEL', key, all[i])
    end
  end
  return total
end

while a <= nargs do
  local op = ARGV[a]
  local r
  if op == 'h' then
    local key = KEYS[k]
    redis.call('HINCRBY', key, ARGV[a + 1], ARGV[a + 2])
    r = window_sum(key, tonumber(ARGV[a + 1]), true)
    redis.call('PEXPIRE', key, ARGV[a + 3])
    k, a = k + 1, a + 4
  elseif op == 'c' then
    r = window_sum(KEYS[k], tonumber(ARGV[a + 1]), false)
    k, a = k + 1, a + 2
  elseif op == 'a' then
    local index, first, slice = KEYS[k], k + 1, ARGV[a + 1]
    redis.call('PFADD', KEYS[first], ARGV[a + 2])
    redis.call('PEXPIRE', KEYS[first], ARGV[a + 3])
    if redis.call('HSETNX', index, slice, 1) == 1 then
      -- first event of a new slice: forget slices that left the window
      local cur = tonumber(slice)
      for _, s in ipairs(redis.call('HKEYS', index)) do
        local v = tonumber(s)
        if v <= cur - S or v > cur then
          redis.call('HDEL', index, s)
          redis.call('DEL', index .. ':' .. s)
        end
      end
    end
    redis.call('PEXPIRE', index, ARGV[a + 3])
    r = redis.call('PFCOUNT', unpack(KEYS, first, first + S - 1))
    k, a = first + S, a + 4
  elseif op == 'd' then
    r = redis.call('PFCOUNT', unpack(KEYS, k, k + S - 1))
    k, a = k + S, a + 1
  elseif op == 'g' then
    r = live(KEYS[k])
    k, a = k + 1, a + 1
  elseif op == 'p' then
    redis.call('HSET', KEYS[k], 'v', ARGV[a + 1], 'e', ARGV[a + 2])
    redis.call('PEXPIRE', KEYS[k], ARGV[a + 3])
    r = 0
    k, a = k + 1, a + 4
  elseif op == 'n' then
    if live(KEYS[k]) then
      r = 0
    else
      redis.call('HSET', KEYS[k], 'v', ARGV[a + 1], 'e', ARGV[a + 2])
      redis.call('PEXPIRE', KEYS[k], ARGV[a + 3])
      r = 1
    end
    k, a = k + 1, a + 4
  elseif op == 't' then
    r = live(KEYS[k])
    redis.call('DEL', KEYS[k])
    k, a = k + 1, a + 1
  elseif op == 'x' then
    local found = live(KEYS[k]) ~= false
    redis.call('DEL', KEYS[k])
    if redis.call('DEL', KEYS[k + 1]) == 1 then
      found = true
    end
    local index = KEYS[k + 2]
    for _, s in ipairs(redis.call('HKEYS', index)) do
      redis.call('DEL', index .. ':' .. s)
    end
    if redis.call('DEL', index) == 1 then
      found = true
    end
    r = found and 1 or 0
    k, a = k + 3, a + 1
  elseif op == 'i' then
    local v = live(KEYS[k])
    if v and string.match(v, '^%-?%d+$') then
      r = redis.call('HINCRBY', KEYS[k], 'v', ARGV[a + 1])
    else
      -- absent, expired, or not an integer: the counter starts over
      redis.call('HSET', KEYS[k], 'v', ARGV[a + 1], 'e', ARGV[a + 2])
      redis.call('PEXPIRE', KEYS[k], ARGV[a + 3])
      r = tonumber(ARGV[a + 1])
    end
    k, a = k + 1, a + 4
  elseif op == 'b' then
    local m = tonumber(ARGV[a + 1])
    if m > 0 then
      r = redis.call('HMGET', KEYS[k], unpack(ARGV, a + 2, a + 1 + m))
    else
      r = {}
    end
    k, a = k + 1, a + 2 + m
  elseif op == 'B' then
    redis.call('HSET', KEYS[k], ARGV[a + 1], ARGV[a + 2])
    redis.call('ZADD', KEYS[k + 1], ARGV[a + 3], ARGV[a + 1])
    redis.call('INCR', KEYS[k + 2])
    r = 0
    k, a = k + 3, a + 4
  elseif op == 'U' then
    r = redis.call('HDEL', KEYS[k], ARGV[a + 1])
    redis.call('ZREM', KEYS[k + 1], ARGV[a + 1])
    if r == 1 then
      redis.call('INCR', KEYS[k + 2])
    end
    k, a = k + 3, a + 2
  elseif op == 'L' then
    -- Drop bans that ended, a bounded number per call so a huge backlog never
    -- blocks Redis for long; the client filters any left over.
    local ended = redis.call('ZRANGEBYSCORE', KEYS[k + 1], '-inf', ARGV[1], 'LIMIT', 0, 1000)
    for _, s in ipairs(ended) do
      redis.call('HDEL', KEYS[k], s)
      redis.call('ZREM', KEYS[k + 1], s)
    end
    r = redis.call('HGETALL', KEYS[k])
    k, a = k + 3, a + 1
  else
    return redis.error_reply('loginguard batch: unknown opcode ' .. tostring(op))
  end
  n = n + 1
  out[n] = r
end
return out
