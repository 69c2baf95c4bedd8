//! The Lua scripts of the Redis contract: each is one atomic step (a
//! request's keys share a hash tag, so one script touches one slot).

/// Stores a reply unless one is stored already (the first reply wins) and
/// tells who waits for it, in one atomic step (the waiters set is read with
/// the write: a node that joined before hears of it; one that joins after
/// finds the reply when it reads the key).
///
/// * `publish` = `1` (one Redis): publishes it to every waiting node here and
///   drops the waiters set.
/// * `publish` = `0` (a Redis Cluster, where a node's channel lives in a slot
///   of its own): returns the waiting nodes, also when the reply was stored
///   before, and keeps the set until it expires: the caller notifies them
///   (`SPUBLISH`), again when the same reply is stored again.
///
/// When the request asked for a callback (its callback record exists), the
/// delivery is added to the stream of deliveries in the same step: a reply
/// is never stored without its delivery. (The stream has a slot of its own:
/// one Redis only; a cluster passes two keys.)
///
/// KEYS: reply, waiters, and optionally callback record, deliveries stream.
/// ARGV: stored reply, TTL in ms, channel prefix, id, publish (`1`/`0`).
/// Returns `{1, nodes…}` when stored, `{0, nodes…}` when a reply was stored
/// before (nodes only with `publish` = `0`).
pub const STORE_REPLY_LUA: &str = r"
local publish = ARGV[5] == '1'
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if publish then return {0} end
  local answer = redis.call('SMEMBERS', KEYS[2])
  table.insert(answer, 1, 0)
  return answer
end
if KEYS[4] and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HSET', KEYS[3], 'reply', ARGV[1], 'state', 'pending', 'attempts', 0)
  redis.call('PERSIST', KEYS[3])
  redis.call('XADD', KEYS[4], '*', 'id', ARGV[4])
end
local nodes = redis.call('SMEMBERS', KEYS[2])
if not publish then
  table.insert(nodes, 1, 1)
  return nodes
end
if #nodes > 0 then
  local message = ARGV[4] .. '\n' .. ARGV[1]
  for _, node in ipairs(nodes) do redis.call('PUBLISH', ARGV[3] .. node, message) end
  redis.call('DEL', KEYS[2])
end
return {1}
";

/// Joins a node to the waiters of a pending request, then reads the reply.
///
/// While the pending record (or, without one, a streamed reply's parts)
/// lives, the node joins the waiters set for what is left of its TTL.
///
/// KEYS: pending, waiters, reply, parts. ARGV: node id.
/// Returns `{reply or false, route or false, principal or false, cancelled
/// or false, 1 when parts of a streamed reply are stored else 0}`; route,
/// principal and the cancelled mark are there while the request's pending
/// record lives. The waiters set expires with the pending record.
pub const JOIN_AND_READ_LUA: &str = r"
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 then ttl = redis.call('PTTL', KEYS[4]) end
if ttl > 0 then
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ttl)
end
local pending = redis.call('HMGET', KEYS[1], 'route', 'principal', 'cancelled')
return {redis.call('GET', KEYS[3]), pending[1], pending[2], pending[3], redis.call('EXISTS', KEYS[4])}
";

/// Records a request as pending and, with a node id, makes that node its waiter.
/// The record keeps the command's topic and key, so that any replica can
/// cancel it ([`CANCEL_PENDING_LUA`]).
///
/// KEYS: pending, waiters. ARGV: route, created (unix ms), TTL in ms, node id
/// or "", principal or "", topic, key.
pub const CREATE_PENDING_LUA: &str = r"
redis.call('HSET', KEYS[1], 'route', ARGV[1], 'created', ARGV[2], 'topic', ARGV[6], 'key', ARGV[7])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'principal', ARGV[5]) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if ARGV[4] ~= '' then
  redis.call('SADD', KEYS[2], ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return 1
";

/// Marks a pending request cancelled, once, unless its reply is stored.
///
/// KEYS: pending, reply.
/// Returns `{'answered'}` (the reply is stored), `{'unknown'}` (no pending
/// record: never issued, or expired), `{'already'}` (cancelled before), or
/// `{'cancelled', topic, key}`: the caller produces the cancel record there
/// (and removes the mark again when it cannot, so that a retry can).
pub const CANCEL_PENDING_LUA: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return {'answered'} end
local p = redis.call('HMGET', KEYS[1], 'topic', 'key', 'cancelled')
if not p[1] then return {'unknown'} end
if p[3] then return {'already'} end
redis.call('HSET', KEYS[1], 'cancelled', '1')
return {'cancelled', p[1], p[2]}
";

/// Claims an idempotency key for a new request, or returns the request that
/// claimed it first; takes over a claim whose command was never marked
/// produced within its lease (the claiming gateway died between claim and
/// produce), so that a retry is not stuck until the key's TTL.
///
/// The record is `<id> <fingerprint> <lease>`: `<lease>` is the unix ms (Redis's
/// clock) until which the claimer may still produce, `0` once it has.
///
/// KEYS: idempotency record. ARGV: id, fingerprint, TTL in ms, lease in ms.
/// Returns `{'claimed'}`, `{'took-over', id}` (same fingerprint, expired
/// lease: the caller produces the command again under that id), or
/// `{'first', record, ms left of the lease or -1 when produced}`.
pub const CLAIM_IDEMPOTENCY_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local first = redis.call('GET', KEYS[1])
if not first then
  redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. (now + tonumber(ARGV[4])), 'PX', ARGV[3])
  return {'claimed'}
end
local id, fingerprint, lease = string.match(first, '^(%S+) (%S*) (%d+)$')
if not id then return {'first', first, -1} end
lease = tonumber(lease)
if lease == 0 then return {'first', first, -1} end
if lease <= now and fingerprint == ARGV[2] then
  redis.call('SET', KEYS[1], id .. ' ' .. fingerprint .. ' ' .. (now + tonumber(ARGV[4])), 'KEEPTTL')
  return {'took-over', id}
end
return {'first', first, math.max(lease - now, 0)}
";

/// Marks a claim's command produced (lease `0`), if the record is still that
/// request's.
///
/// KEYS: idempotency record. ARGV: id.
pub const MARK_PRODUCED_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local id, fingerprint = string.match(v, '^(%S+) (%S*) %d+$')
if id ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], id .. ' ' .. fingerprint .. ' 0', 'KEEPTTL')
return 1
";

/// GCRA rate limit in one step, on Redis's clock (shared by all replicas).
///
/// KEYS: the limit's key. ARGV: interval (µs), tolerance = interval × (burst − 1) (µs).
/// Returns `{allowed 0/1, remaining, retry after µs, reset µs}`.
pub const RATE_LIMIT_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tau then
  return {0, 0, tat - now - tau, tat - now}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((tau - (new_tat - now) + interval) / interval), 0, new_tat - now}
";
