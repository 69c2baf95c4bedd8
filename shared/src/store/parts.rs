//! Streamed replies in Redis: a service's parts of one reply (`reply-part`,
//! `reply-last`) kept in order in a per-request Redis Stream, each part once.
//!
//! The stream's entry ids are the part numbers (`0-<part + 1>`): Redis takes
//! an entry only above the stream's last id, so a part delivered again (a
//! redelivered record) or out of order is dropped by Redis itself, and a
//! reader resumes after part `n` by reading from id `0-<n + 2>`. The stream
//! holds at most [`MAX_PART`](crate::record::MAX_PART) + 1 parts and expires
//! with the TTL, refreshed by each part.

use bytes::Bytes;

use super::{Store, StoreError, decode_reply};
use crate::record::Reply;

/// Appends a part to a request's stream of parts, unless a single reply is
/// stored for it or the part is not after the stream's last one; then tells
/// who waits, as `STORE_REPLY_LUA` does: `publish` = `1` publishes it here
/// (and the last part drops the waiters set), `0` returns the waiting nodes,
/// also for a part stored before, for the caller to notify.
///
/// KEYS: parts, waiters, reply. ARGV: stored part, TTL in ms, channel prefix,
/// id, part number, `1` for the last part, publish (`1`/`0`).
/// Returns `{1, nodes…}` when appended, `{0, nodes…}` when dropped (a
/// duplicate; nodes only with `publish` = `0`).
pub const STORE_PART_LUA: &str = r"
local publish = ARGV[7] == '1'
local function answer(n)
  if publish then return {n} end
  local nodes = redis.call('SMEMBERS', KEYS[2])
  table.insert(nodes, 1, n)
  return nodes
end
if redis.call('EXISTS', KEYS[3]) == 1 then return answer(0) end
local added = redis.pcall('XADD', KEYS[1], '0-' .. (tonumber(ARGV[5]) + 1), 'r', ARGV[1])
if type(added) == 'table' and added.err then return answer(0) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if not publish then return answer(1) end
local nodes = redis.call('SMEMBERS', KEYS[2])
if #nodes > 0 then
  local message = ARGV[4] .. '\n' .. ARGV[1]
  for _, node in ipairs(nodes) do redis.call('PUBLISH', ARGV[3] .. node, message) end
  if ARGV[6] == '1' then redis.call('DEL', KEYS[2]) end
end
return {1}
";

/// Most parts one read returns.
pub const PARTS_PER_READ: usize = 100;

impl Store {
    /// The stored parts of `id` after part `after` (from the first with
    /// `None`), in order, at most [`PARTS_PER_READ`].
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not answer or holds a malformed part.
    pub async fn read_parts(&self, id: &str, after: Option<u32>) -> Result<Vec<Reply>, StoreError> {
        let start = format!("0-{}", after.map_or(1, |n| u64::from(n) + 2));
        let key = self.keys().parts(id);
        let entries: Vec<(String, Vec<(String, Bytes)>)> = self
            .bounded(async {
                let mut conn = self.connection();
                Ok(redis::cmd("XRANGE")
                    .arg(&key)
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(PARTS_PER_READ)
                    .query_async(&mut conn)
                    .await?)
            })
            .await?;
        let mut parts = Vec::with_capacity(entries.len());
        for (_, fields) in entries {
            if let Some((_, stored)) = fields.into_iter().find(|(f, _)| f == "r") {
                parts.push(decode_reply(&stored)?);
            }
        }
        Ok(parts)
    }
}
