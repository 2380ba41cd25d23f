"""The Lua scripts of the Redis broker: each runs atomically inside Redis.

Ids are 16-digit microsecond numbers, exact as Redis scores (below 2^53).
History freshness uses Redis ``TIME``, so every worker agrees on it.
"""

from webapp.events import RANK, TERMINAL

_RANK = "{" + ", ".join(f'["{s}"] = {r}' for s, r in RANK.items()) + "}"
_TERMINAL = "{" + ", ".join(f'["{s}"] = true' for s in sorted(TERMINAL)) + "}"

#: Sum the user's connections reported by every worker but ``skip`` (presence). A
#: worker that died is still listed for a while, but its counts have expired.
_COUNT_FUNCTION = """
local function count_connections(prefix, workers_key, user, skip)
  local total = 0
  for _, worker in ipairs(redis.call('ZRANGE', workers_key, 0, -1)) do
    if worker ~= skip then
      total = total + (tonumber(redis.call('HGET', prefix .. 'w:' .. worker .. ':n', user)) or 0)
    end
  end
  return total
end
"""

#: Fields of one event in the publish script's ARGV, after the common ones.
PUBLISH_FIELDS = 8
#: ARGV entries before the first event's fields.
PUBLISH_COMMON = 5

#: Judge, number, store and publish events one after another, in order, atomically:
#: a single publish is a batch of one. What only bounds or ages the keys (history
#: trimming, expiries, the user's newest id) is done once per key at the end, and
#: the accepted events go out as one pub/sub message, one envelope per line, in
#: order (``RedisBroker._dispatch``). Answers one entry per event:
#: {'accept', id, delivered} | {'duplicate'} | {'stale'} | {'cached', answer JSON}
#: | {'conflict'} | {'unknown'}.
PUBLISH = _COUNT_FUNCTION + f"""
-- KEYS: workers. ARGV: prefix, history size, history ttl, idempotency ttl, channel, then
-- per event: call id, status, user, sequence, idempotencyKey, head, tail, timestamp
-- (see RedisBroker.publish_batch).
local RANK = {_RANK}
local TERMINAL = {_TERMINAL}
local prefix, size, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local idem_ttl, channel = ARGV[4], ARGV[5]
local workers_key = KEYS[1]
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
-- Connections per owner, counted once per batch (presence changes every few seconds).
local reach = {{}}
-- Each owner's newest id so far, and the calls touched: trimmed and expired at the end.
local lasts, calls = {{}}, {{}}
-- One envelope per accepted event, published together at the end.
local envelopes = {{}}

local function publish_one(call_id, status, user, seq, idempotency, head, tail, timestamp)
  local call_key = prefix .. 'call:' .. call_id
  local previous = redis.call('HMGET', call_key, 'owner', 'status', 'seq')
  local owner = previous[1]
  if owner then
    if user ~= '' and user ~= owner then return {{'conflict'}} end
  else
    if user == '' then return {{'unknown'}} end
    owner = user
  end

  -- Idempotency keys are scoped by owner (its length first, so no two owner and
  -- key pairs share a Redis key): another user's key never answers for this one.
  local idem_key = ''
  if idempotency ~= '' then
    idem_key = prefix .. 'idem:' .. #owner .. ':' .. owner .. ':' .. idempotency
    local cached = redis.call('GET', idem_key)
    if cached then return {{'cached', cached}} end
  end

  -- The forward-only rule, exactly as webapp.events.judge.
  local verdict = 'accept'
  if previous[1] then
    local before = previous[2]
    if status == before then
      verdict = 'duplicate'
    elseif TERMINAL[before] then
      verdict = 'stale'
    elseif seq ~= '' and previous[3] and previous[3] ~= ''
        and tonumber(seq) <= tonumber(previous[3]) then
      verdict = 'stale'
    elseif RANK[status] <= RANK[before] then
      verdict = 'stale'
    end
  end
  if verdict ~= 'accept' then
    if idem_key ~= '' then
      redis.call('SET', idem_key, '{{"id":null,"dropped":"' .. verdict .. '"}}', 'EX', idem_ttl)
    end
    return {{verdict}}
  end

  -- The id: Redis time in microseconds, or the user's previous id + 1.
  local user_prefix = prefix .. 'u:' .. owner .. ':'
  local number = now
  local last = lasts[owner] or tonumber(redis.call('GET', user_prefix .. 'last') or '')
  if last and last >= number then number = last + 1 end
  lasts[owner] = number
  local id = string.format('%016.0f', number)
  local message = head .. id .. tail

  redis.call('ZADD', user_prefix .. 'h', id, message)
  if TERMINAL[status] then
    redis.call('HDEL', user_prefix .. 'open', call_id)
  else
    redis.call('HSET', user_prefix .. 'open', call_id, id)
  end
  redis.call('HSET', call_key, 'owner', owner, 'status', status, 'seq', seq,
             'updatedAt', timestamp, 'event', message)
  calls[call_key] = true

  if reach[owner] == nil then reach[owner] = count_connections(prefix, workers_key, owner, '') end
  -- The message last, so the listener hands its text on as it is (RedisBroker._dispatch).
  envelopes[#envelopes + 1] = '{{"u":' .. cjson.encode(owner) .. ',"i":"' .. id .. '","m":'
                              .. message .. '}}'
  if idem_key ~= '' then
    redis.call('SET', idem_key, '{{"id":"' .. id .. '","event":' .. message .. '}}', 'EX', idem_ttl)
  end
  return {{'accept', id, reach[owner]}}
end

local answers = {{}}
for i = {PUBLISH_COMMON} + 1, #ARGV, {PUBLISH_FIELDS} do
  answers[#answers + 1] = publish_one(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3],
                                      ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7])
end

-- Once per owner: trim history (by age, then to its size), age the keys, keep the newest id.
for owner, last in pairs(lasts) do
  local user_prefix = prefix .. 'u:' .. owner .. ':'
  local history_key, open_key = user_prefix .. 'h', user_prefix .. 'open'
  redis.call('ZREMRANGEBYSCORE', history_key, '-inf', string.format('%.0f', now - ttl * 1000000))
  redis.call('ZREMRANGEBYRANK', history_key, 0, -(size + 1))
  redis.call('EXPIRE', history_key, ttl)
  redis.call('SET', user_prefix .. 'last', string.format('%016.0f', last), 'EX', ttl)
  if redis.call('HLEN', open_key) > 2 * size then
    -- Calls whose latest event has left history can never be in a snapshot.
    local oldest = redis.call('ZRANGE', history_key, 0, 0, 'WITHSCORES')[2]
    local entries = redis.call('HGETALL', open_key)
    for i = 1, #entries, 2 do
      if tonumber(entries[i + 1]) < tonumber(oldest) then
        redis.call('HDEL', open_key, entries[i])
      end
    end
  end
  redis.call('EXPIRE', open_key, ttl)
end
for call_key in pairs(calls) do
  redis.call('EXPIRE', call_key, ttl)
end
if #envelopes > 0 then
  redis.call('PUBLISH', channel, table.concat(envelopes, '\\n'))
end
return answers
"""

#: Publish a live-only message; answer the user's connection count.
TRANSIENT = _COUNT_FUNCTION + """
-- KEYS: workers. ARGV: prefix, user, payload, channel.
local delivered = count_connections(ARGV[1], KEYS[1], ARGV[2], '')
redis.call('PUBLISH', ARGV[4], ARGV[3])
return delivered
"""

#: The user's connections in every worker but one.
COUNT = _COUNT_FUNCTION + """
-- KEYS: workers. ARGV: prefix, user, worker to leave out.
return count_connections(ARGV[1], KEYS[1], ARGV[2], ARGV[3])
"""

#: The user's latest id, whether ``last event id`` is still in fresh history, and
#: the events after it: {latest, 1|0, event...}.
HISTORY = """
-- KEYS: history, last. ARGV: last event id, history ttl, '1' when the id is well formed.
local clock = redis.call('TIME')
local cutoff = tonumber(clock[1]) * 1000000 + tonumber(clock[2]) - tonumber(ARGV[2]) * 1000000
local latest = redis.call('GET', KEYS[2])
if ARGV[3] ~= '1' then return {latest, 0} end
local from = tonumber(ARGV[1])
if from <= cutoff then return {latest, 0} end
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf', 'WITHSCORES')
if #rows == 0 or tonumber(rows[2]) ~= from then return {latest, 0} end
local out = {latest, 1}
for i = 3, #rows, 2 do out[#out + 1] = rows[i] end
return out
"""

#: The user's latest id and the fresh events that are the latest of an open call.
SNAPSHOT = """
-- KEYS: history, last, open calls. ARGV: history ttl.
local latest = redis.call('GET', KEYS[2])
if not latest then return {false} end
local clock = redis.call('TIME')
local cutoff = tonumber(clock[1]) * 1000000 + tonumber(clock[2]) - tonumber(ARGV[1]) * 1000000
local wanted = {}
local open = redis.call('HGETALL', KEYS[3])
for i = 2, #open, 2 do wanted[tonumber(open[i])] = true end
local out = {latest}
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], string.format('(%.0f', cutoff), '+inf',
                       'WITHSCORES')
for i = 1, #rows, 2 do
  if wanted[tonumber(rows[i + 1])] then out[#out + 1] = rows[i] end
end
return out
"""
