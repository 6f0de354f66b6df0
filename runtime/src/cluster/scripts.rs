//! The Lua scripts that make each cluster step one atomic step in Redis: a host's heartbeat,
//! its claim of chunks (redelivered ones first), the fenced commit of a chunk's results, and
//! the reaper that redelivers a dead host's chunks, and a submitter's add of a chunk, once. Times are Redis's own (`TIME`), never a host's clock.

use redis::Script;

/// Renews a host's lease: `hosts[host] = now + lease`, and records its slots.
///
/// KEYS: hosts, slots, dead. ARGV: host, lease (ms), slots. Returns {the server time (ms),
/// when the host was last declared dead (ms) or -1}.
pub(crate) const HEARTBEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local dead = redis.call('ZSCORE', KEYS[3], ARGV[1])
if dead then dead = tonumber(dead) else dead = -1 end
return {now, dead}
"#;

/// Renews the leases on tenants' streams (`{wasmpool}:v3:tenant:<T>`), and registers again
/// a tenant whose lease had expired (its streams may have been removed by the reaper, or
/// lost with Redis's data): adds it to `tenants` and makes its task and redelivery
/// streams and their group (at their first entry, so entries added meanwhile are
/// claimed).
///
/// KEYS: tenants. ARGV: key prefix, lease (ms), group, then the tenants. Returns how many
/// were registered again.
pub(crate) const TENANT_LEASE: &str = r#"
local again = 0
for i = 4, #ARGV do
  local t = ARGV[i]
  local lease = ARGV[1] .. 'tenant:' .. t
  if redis.call('EXISTS', lease) == 0 then
    redis.call('SADD', KEYS[1], t)
    redis.pcall('XGROUP', 'CREATE', ARGV[1] .. 'tasks:' .. t, ARGV[3], '0', 'MKSTREAM')
    redis.pcall('XGROUP', 'CREATE', ARGV[1] .. 'redo:' .. t, ARGV[3], '0', 'MKSTREAM')
    again = again + 1
  end
  redis.call('SET', lease, '1', 'PX', ARGV[2])
end
return again
"#;

/// Commits chunks' results, each fenced by its attempt: only if the job's current attempt
/// of the chunk is the one the host ran and no result is committed yet. Either way the
/// host's stream entry is acknowledged and deleted; a refused (late) result is counted as
/// dropped.
///
/// Fenced also by the host's declaration: a chunk run in workers whose object lane was
/// admitted at or before the host was last declared dead (`{wasmpool}:v3:dead`; its object
/// operations were refused from then on, so its result may be the refusal) is not
/// committed but given back, as the reaper would have given it had its pass come before
/// the host came back: added with its attempt one higher to the redelivery stream, or,
/// when its retries are spent, failed as lost (its submitter is told).
///
/// One call commits a batch of chunks (those a host finished together), each as if alone
/// and in order; what the batch's chunks share is done once: the host's declaration read,
/// the acknowledgement and delete of the entries of one stream, the expiry of one results
/// list, the counts. With an `apply_async` flood each chunk is a task, and this is most of
/// Redis's work for it: one script call and four commands a chunk, where a call each made
/// nine.
///
/// KEYS: stats, dead, redoing (the redelivery streams with entries to claim), then for each
/// chunk its entry's task stream, its job, its results list and the stream's redelivery
/// stream. ARGV: group, host, then for each chunk its entry id, chunk, attempt, record, ttl
/// (ms), when the lane the chunk ran in was admitted (Redis time, ms), job.
/// Returns for each chunk 1 when committed, 0 when dropped, 2 when this very attempt was
/// committed already (a commit sent again after a lost connection: not a late result, not
/// counted), 3 when the chunk was cancelled (its fence `x`: not counted either), 4 when
/// given back and redelivered (or given back already: a give-back sent again), 5 when given
/// back and failed as lost.
pub(crate) const COMMIT: &str = r#"
local group, host = ARGV[1], ARGV[2]
local dead = redis.call('ZSCORE', KEYS[2], host)
dead = dead and tonumber(dead)
local counts = {committed = 0, dropped = 0, redelivered = 0, lost = 0}
-- The entries to acknowledge and delete, by stream (at the end: a call that fails on its
-- way leaves them pending, and the host sends the batch again).
local acks, streams = {}, {}
-- A record is pushed as its chunk is marked done, so that a call failing on its way never
-- leaves a chunk marked done without its record (sent again, it would answer 2 and push
-- nothing); its list's expiry is set at its first push, and again for another ttl.
local expiry = {}
local function push(list, record, ttl)
  redis.call('RPUSH', list, record)
  if expiry[list] ~= ttl then
    redis.call('PEXPIRE', list, ttl)
    expiry[list] = ttl
  end
end
local function commit(stream, job, results, redo, id, c, att, record, ttl, since, jobid)
  local fenced = dead and dead >= tonumber(since)
  local entry = nil
  if fenced then entry = redis.call('XRANGE', stream, id, id)[1] end
  if not acks[stream] then acks[stream] = {}; table.insert(streams, stream) end
  table.insert(acks[stream], id)
  -- One read of the chunk's done mark, given-back attempt and current attempt (each
  -- false when unset).
  local marks = redis.call('HMGET', job, 'd:' .. c, 'g:' .. c, 'a:' .. c)
  local d, cur = marks[1], marks[3]
  if d == 'x' then return 3 end
  if marks[2] == att then return 4 end
  if not cur then cur = '0' end
  if cur == att and d == att then return 2 end
  if cur ~= att or d then
    counts.dropped = counts.dropped + 1
    return 0
  end
  if fenced then
    redis.call('HSET', job, 'g:' .. c, att)
    redis.call('PEXPIRE', job, ttl)
    local f = {}
    if entry then
      local flat = entry[2]
      for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
    end
    local a = tonumber(att)
    if entry and f['j'] and f['r'] and f['p'] and a and a < (tonumber(f['n']) or 0) then
      redis.call('HSET', job, 'a:' .. c, tostring(a + 1))
      redis.pcall('XGROUP', 'CREATE', redo, group, '0', 'MKSTREAM')
      redis.call('XADD', redo, '*', 'j', f['j'], 'c', c, 'a', tostring(a + 1),
        'r', f['r'], 'n', f['n'], 't', f['t'] or ttl, 'p', f['p'])
      redis.call('SADD', KEYS[3], redo)
      counts.redelivered = counts.redelivered + 1
      return 4
    end
    redis.call('HSET', job, 'd:' .. c, 'lost')
    push(results, 'L ' .. jobid .. ' ' .. c .. ' ' .. host, ttl)
    counts.lost = counts.lost + 1
    return 5
  end
  redis.call('HSET', job, 'd:' .. c, att)
  redis.call('PEXPIRE', job, ttl)
  push(results, record, ttl)
  counts.committed = counts.committed + 1
  return 1
end
local answers = {}
for i = 0, (#KEYS - 3) / 4 - 1 do
  local k, a = 3 + 4 * i, 2 + 7 * i
  answers[i + 1] = commit(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4],
    ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7])
end
for _, stream in ipairs(streams) do
  redis.call('XACK', stream, group, unpack(acks[stream]))
  redis.call('XDEL', stream, unpack(acks[stream]))
end
for name, n in pairs(counts) do
  if n > 0 then redis.call('HINCRBY', KEYS[1], name, n) end
end
return answers
"#;

/// Adds chunks to a task stream, each once: its entry's id is recorded in its job's record
/// (`s:<chunk>`), and a chunk added already is not added again, its recorded id returned.
/// A submitter whose connection broke after sending it cannot know whether it landed, and
/// sends it again: so it never waits twice in the stream (never runs twice, which work with
/// retries 0 must not). One call adds a batch of chunks (a pool's sender's, in order), one
/// call where each chunk made one: with an `apply_async` flood each chunk is a task.
///
/// KEYS: the task stream, then each chunk's job record. ARGV: ttl (ms) of the job records
/// and of the results (the entry's `t`), the submitter (`r`), then for each chunk its job
/// (`j`), chunk (`c`), retries (`n`) and payload (`p`). Returns the entries' ids.
pub(crate) const SUBMIT: &str = r#"
local ttl, client = ARGV[1], ARGV[2]
local ids = {}
for i = 2, #KEYS do
  local a = 2 + 4 * (i - 2)
  local job, c = KEYS[i], ARGV[a + 2]
  local sent = 's:' .. c
  local id = redis.call('HGET', job, sent)
  if not id then
    id = redis.call('XADD', KEYS[1], '*', 'j', ARGV[a + 1], 'c', c, 'a', '0', 'r', client,
      'n', ARGV[a + 3], 't', ttl, 'p', ARGV[a + 4])
    redis.call('HSET', job, sent, id)
    -- Kept a TTL from its last chunk's submission (as a commit keeps it from its last
    -- result).
    redis.call('PEXPIRE', job, ttl)
  end
  ids[i - 1] = id
end
return ids
"#;

/// Reclaims the chunks of hosts whose lease has expired (or that hold none), on the task
/// stream of untenanted pools and on every tenant's, and on their redelivery streams: each
/// stream entry pending with such a host, idle at least `min idle`, is acknowledged and
/// deleted, then either added with its attempt one higher to the redelivery stream of its
/// task stream (which hosts read before the task stream, so it runs ahead of the chunks
/// still waiting there; the old attempt's result will be refused), or, when its retries are
/// spent, failed as lost (its submitter is told). A host whose chunks it took is recorded
/// as declared dead, now (the objects' operations of its tasks are refused from then on;
/// records older than a day are dropped). A dead host with nothing pending on a stream
/// leaves its group; one with nothing pending anywhere is forgotten. A tenant whose lease
/// on its streams has expired (no live pool of it, no host joined for it renews it) and
/// whose task and redelivery streams are both empty with nothing pending has them removed,
/// and is taken out of `tenants` (and its redelivery stream out of `redoing`): a pool of
/// it registers it again.
///
/// Every process runs this every beat, but one pass runs per beat: the first after the last
/// one's turn ended takes the next (`reaping`, set for nine tenths of a beat), and every
/// other call ends at once, so the reaper's work does not grow with the number of hosts and
/// pools (should the process whose pass it was die, its turn ends all the same).
///
/// The tenants' streams are read (two `XINFO CONSUMERS` a tenant) only on a sweep (the
/// first pass after the last sweep's period ended: `swept`), or when some host's lease has
/// expired: with many tenants reading them all each time is most of Redis's work when
/// nothing has died. A host whose
/// lease expired stays in `hosts` until its chunks are taken (or for a minute), so each
/// pass while it is there reads every stream; a consumer no host entry names any more (a
/// host forgotten with chunks still pending, which the reaper gave it a minute to lose) is
/// found by the next sweep.
///
/// KEYS: hosts, tasks, stats, slots, tenants, redo (of tasks), dead, redoing (the
/// redelivery streams with entries to claim: each one added to), reaping, swept. ARGV:
/// group, min idle (ms), key prefix, ttl (ms) for an entry without its submitter's, count
/// (per host and stream), sweep period (ms), turn (ms: a little less than a beat).
/// Returns {redelivered, lost, whether this call had the turn (1) or ended at once (0)}.
pub(crate) const REAP: &str = r#"
if not redis.call('SET', KEYS[9], '1', 'NX', 'PX', ARGV[7]) then return {0, 0, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function dead(host)
  local lease = redis.call('ZSCORE', KEYS[1], host)
  return (not lease) or tonumber(lease) < now
end
local moved, lost = 0, 0
local busy = {}
-- The redelivery stream's group, made when Redis lost it (a restart) before a host did.
local grouped = {}
local function group(redo)
  if not grouped[redo] then
    redis.pcall('XGROUP', 'CREATE', redo, ARGV[1], '0', 'MKSTREAM')
    grouped[redo] = true
  end
end
local function reap(stream, redo)
  local consumers = redis.pcall('XINFO', 'CONSUMERS', stream, ARGV[1])
  -- A tenant's stream without its group yet (Redis lost its data): nothing claimed there.
  if type(consumers) ~= 'table' or consumers.err then return end
  for _, c in ipairs(consumers) do
    local name, pending = nil, 0
    for i = 1, #c, 2 do
      if c[i] == 'name' then name = c[i + 1] elseif c[i] == 'pending' then pending = tonumber(c[i + 1]) end
    end
    if name and dead(name) then
      if pending > 0 then
        busy[name] = true
        local entries = redis.call('XPENDING', stream, ARGV[1], 'IDLE', ARGV[2], '-', '+', ARGV[5], name)
        if #entries > 0 then redis.call('ZADD', KEYS[7], now, name) end
        for _, p in ipairs(entries) do
          local id = p[1]
          local e = redis.call('XRANGE', stream, id, id)
          redis.call('XACK', stream, ARGV[1], id)
          redis.call('XDEL', stream, id)
          if e[1] then
            local f = {}
            local flat = e[1][2]
            for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
            local job = ARGV[3] .. 'job:' .. f['j']
            local ttl = f['t'] or ARGV[4]
            local cur = redis.call('HGET', job, 'a:' .. f['c'])
            if not cur then cur = '0' end
            if cur == f['a'] and redis.call('HEXISTS', job, 'd:' .. f['c']) == 0 then
              local a = tonumber(f['a'])
              if a < tonumber(f['n']) then
                redis.call('HSET', job, 'a:' .. f['c'], tostring(a + 1))
                redis.call('PEXPIRE', job, ttl)
                group(redo)
                redis.call('XADD', redo, '*', 'j', f['j'], 'c', f['c'], 'a', tostring(a + 1),
                  'r', f['r'], 'n', f['n'], 't', f['t'] or ARGV[4], 'p', f['p'])
                redis.call('SADD', KEYS[8], redo)
                redis.call('HINCRBY', KEYS[3], 'redelivered', 1)
                moved = moved + 1
              else
                redis.call('HSET', job, 'd:' .. f['c'], 'lost')
                redis.call('PEXPIRE', job, ttl)
                local list = ARGV[3] .. 'results:' .. f['r']
                redis.call('RPUSH', list, 'L ' .. f['j'] .. ' ' .. f['c'] .. ' ' .. name)
                redis.call('PEXPIRE', list, ttl)
                redis.call('HINCRBY', KEYS[3], 'lost', 1)
                lost = lost + 1
              end
            end
          end
        end
      else
        redis.call('XGROUP', 'DELCONSUMER', stream, ARGV[1], name)
        if not busy[name] then busy[name] = false end
      end
    end
  end
end
reap(KEYS[2], KEYS[6])
reap(KEYS[6], KEYS[6])
-- Whether a stream holds no entry and its group none pending (true for one that is gone).
local function drained(stream)
  if redis.call('XLEN', stream) > 0 then return false end
  local p = redis.pcall('XPENDING', stream, ARGV[1])
  return not (type(p) == 'table' and not p.err and tonumber(p[1]) and tonumber(p[1]) > 0)
end
local sweep = redis.call('SET', KEYS[10], '1', 'NX', 'PX', ARGV[6])
  or #redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'LIMIT', 0, 1) > 0
if sweep then
  for _, tenant in ipairs(redis.call('SMEMBERS', KEYS[5])) do
    local tasks, redo = ARGV[3] .. 'tasks:' .. tenant, ARGV[3] .. 'redo:' .. tenant
    reap(tasks, redo)
    reap(redo, redo)
    if redis.call('EXISTS', ARGV[3] .. 'tenant:' .. tenant) == 0
        and drained(tasks) and drained(redo) then
      redis.call('DEL', tasks, redo)
      redis.call('SREM', KEYS[5], tenant)
      redis.call('SREM', KEYS[8], redo)
    end
  end
end
for name, held in pairs(busy) do
  if not held then
    redis.call('ZREM', KEYS[1], name)
    redis.call('HDEL', KEYS[4], name)
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now - 86400000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
for _, h in ipairs(gone) do
  redis.call('ZREM', KEYS[1], h)
  redis.call('HDEL', KEYS[4], h)
end
return {moved, lost, 1}
"#;

/// A host's claim without waiting, while its redelivery streams may hold entries not yet
/// claimed: reads the streams in the order given (the redelivery streams first, then the
/// task streams), each for at most its own count and never more in all than the room, so
/// redelivered chunks are claimed ahead of those waiting in the task streams, in one round
/// trip. Only the redelivery streams named in the set `redoing` are read (those the reaper
/// or a host giving a chunk back added entries to since a read drained them), and a read
/// that gets fewer entries than it asked takes its stream out of the set: so with many
/// tenants a claim reads only the few streams with redelivered work waiting, and entries
/// claimed but not yet committed do not count. A host serving every tenant names none: it
/// reads every stream of the set. A stream without the group (Redis lost its data) is
/// skipped and named, for the host to set up again; so is one that fails otherwise (with
/// its error), rather than losing what the streams before it gave. Also answers whether
/// this host's redelivery streams are still in the set (whether its next read needs this
/// script), and when the host was last declared dead (so it starts what it claimed in
/// workers admitted after that, not in workers whose object operations are refused). A
/// redelivered entry whose chunk was cancelled since (its fence is `x`) is acknowledged and
/// deleted, not returned: the submitter deleted the entries it knew, not the copies the
/// reaper made.
///
/// KEYS: the redelivery streams, then the task streams. ARGV: group, consumer, room, how
/// many of KEYS are redelivery streams, key prefix, `1` to read every redelivery stream of
/// the set (none named in KEYS) or `0`, then each stream's most entries. Returns
/// {{{stream, entries}, …} as `XREADGROUP` does, {stream without the group, …}, {error, …},
/// how many of the host's redelivery streams are still in the set, when the host was last
/// declared dead (ms) or -1}.
pub(crate) const CLAIM: &str = r#"
local room = tonumber(ARGV[3])
local got, missing, errors = {}, {}, {}
local redo = tonumber(ARGV[4])
local redoing = ARGV[5] .. 'redoing'
local every = ARGV[6] == '1'
local function cancelled(flat)
  local f = {}
  for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  if not (f['j'] and f['c']) then return false end
  return redis.call('HGET', ARGV[5] .. 'job:' .. f['j'], 'd:' .. f['c']) == 'x'
end
-- What to read: {stream, most entries, whether it is a redelivery stream}.
local reads = {}
if every then
  for _, stream in ipairs(redis.call('SMEMBERS', redoing)) do
    table.insert(reads, {stream, room, true})
  end
end
for i, stream in ipairs(KEYS) do
  local isredo = i <= redo
  if (not isredo) or redis.call('SISMEMBER', redoing, stream) == 1 then
    table.insert(reads, {stream, tonumber(ARGV[6 + i]), isredo})
  end
end
for _, read in ipairs(reads) do
  if room <= 0 then break end
  local stream, isredo = read[1], read[3]
  local n = math.min(room, read[2])
  local r = redis.pcall('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', n, 'STREAMS', stream, '>')
  if type(r) == 'table' and r.err then
    if string.sub(r.err, 1, 7) == 'NOGROUP' then
      table.insert(missing, stream)
    else
      table.insert(errors, stream .. ': ' .. r.err)
    end
  else
    local raw = 0
    if type(r) == 'table' then
      for _, s in ipairs(r) do
        raw = raw + #s[2]
        local kept = s[2]
        if isredo then
          kept = {}
          for _, e in ipairs(s[2]) do
            if cancelled(e[2]) then
              redis.call('XACK', stream, ARGV[1], e[1])
              redis.call('XDEL', stream, e[1])
            else
              table.insert(kept, e)
            end
          end
        end
        if #kept > 0 then
          table.insert(got, {s[1], kept})
          room = room - #kept
        end
      end
    end
    -- Drained: nothing in it is left to claim.
    if isredo and raw < n then redis.call('SREM', redoing, stream) end
  end
end
local left = 0
if every then
  left = redis.call('SCARD', redoing)
else
  for i = 1, redo do left = left + redis.call('SISMEMBER', redoing, KEYS[i]) end
end
local dead = redis.call('ZSCORE', ARGV[5] .. 'dead', ARGV[2])
return {got, missing, errors, left, dead and tonumber(dead) or -1}
"#;

/// The most chunks one call of a batched script ([`COMMIT`], [`SUBMIT`]) takes: a batch of
/// more is several calls in one pipeline, so that no one call holds Redis (whose scripts
/// run alone) for long.
pub(crate) const CHUNKS_A_CALL: usize = 64;

/// The most bytes of records or payloads one call of a batched script takes, but for a
/// chunk bigger than this alone: Redis reads a command whole before it runs it, and closes
/// a connection whose command passes its query buffer's limit (1 GiB by default), where
/// the commands of a pipeline are read one at a time.
pub(crate) const BYTES_A_CALL: usize = 4 << 20;

/// The calls a batch of chunks of these sizes (bytes) goes in: ranges of the batch, in
/// order, each of at most [`CHUNKS_A_CALL`] chunks and [`BYTES_A_CALL`] bytes (a chunk
/// bigger than that in a call of its own).
pub(crate) fn calls(sizes: impl IntoIterator<Item = usize>) -> Vec<std::ops::Range<usize>> {
    let mut calls: Vec<std::ops::Range<usize>> = Vec::new();
    let mut bytes = 0;
    for (i, size) in sizes.into_iter().enumerate() {
        match calls.last_mut() {
            Some(call) if call.len() < CHUNKS_A_CALL && bytes + size <= BYTES_A_CALL => {
                call.end = i + 1;
                bytes += size;
            }
            _ => {
                calls.push(i..i + 1);
                bytes = size;
            }
        }
    }
    calls
}

/// The scripts, loaded once per connection's first use (EVALSHA, with EVAL on NOSCRIPT,
/// which `redis::Script` does).
#[derive(Debug)]
pub(crate) struct Scripts {
    pub heartbeat: Script,
    pub commit: Script,
    pub reap: Script,
    pub claim: Script,
    pub tenant_lease: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            heartbeat: Script::new(HEARTBEAT),
            commit: Script::new(COMMIT),
            reap: Script::new(REAP),
            claim: Script::new(CLAIM),
            tenant_lease: Script::new(TENANT_LEASE),
        }
    }
}

#[cfg(test)]
mod tests;
