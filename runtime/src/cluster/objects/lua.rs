//! The Lua scripts of the shared objects kept in Redis: one script performs one operation
//! on one object atomically, another creates objects, a third gives back what a dead worker
//! or host held.
//!
//! An object is a hash `PREFIX o:<n>` (its kind, its tokens, its small state) and, by kind,
//! `:q` (a queue's items, a LIST), `:q0`/`:q1` (what each pipe end receives), `:h` (holders:
//! owner -> count, a HASH), `:d` (a dict, a HASH), `:L` (a list, a LIST) and `:w<ch>` (wake
//! tokens of one wait channel, a LIST that waiters `BLPOP`). Every key of an object expires
//! after its idle TTL (the `ttl` field, in ms), renewed by every operation. A container's
//! `sz` field counts what it holds (its items' bytes and an overhead for each, as the local
//! broker counts them), at most 256 MiB.
//!
//! The answer of the operation script is an array: `{'K', form, …}` done (form `u` unit,
//! `v` a value, `m` maybe a value, `V` values (an array), `e` entries (an array of keys and
//! values), `c` a count, `i` an integer, `f` a
//! flag, `r` run the barrier's action), `{'E', code, message}` an error, `{'W', channel,
//! state, nodeadline}` wait on that channel and ask again (passing `state` back), `{'T'}` the
//! timeout's answer (asked with `final` set: the deadline has passed).

/// One operation. KEYS: the object's hash. ARGV: op, end, token, owner, state, final
/// ("1" when the deadline has passed), key prefix, then the operation's arguments.
///
/// An owner that is a host's worker, `h:HOST/PID/SINCE`, names when (Redis time, ms) the
/// host's object lane was admitted: if the reaper has declared the host dead since (`dead`
/// ZSET), the operation comes from a task whose work and objects were given to others, and
/// is refused, before it changes anything.
pub(crate) const OBJECT_OP: &str = r#"
local base = KEYS[1]
local op, e, token, owner, state, final, prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6] == '1', ARGV[7]
local a1, a2, a3 = ARGV[8], ARGV[9], ARGV[10]
local from_host, since = string.match(owner, '^h:([^/]+)/%d+/(%d+)$')
if from_host then
  local dead = redis.call('ZSCORE', prefix .. 'dead', from_host)
  if dead and tonumber(dead) >= tonumber(since) then
    return {'E', 'stale', 'refused: the host running this task (' .. from_host .. ') was declared dead (its lease expired) and its chunks and shared objects given to others'}
  end
end
local m = redis.call('HGETALL', base)
local stale = {'E', 'stale', 'no such object: it expired (idle past its TTL), or the handle was not made in this cluster'}
if #m == 0 then return stale end
local f = {}
for i = 1, #m, 2 do f[m[i]] = m[i + 1] end
if f['t' .. e] ~= token then return stale end
local kind = f['k']
local ttl = f['ttl']

local function key(s) return base .. s end
local function touch(...)
  redis.call('PEXPIRE', base, ttl)
  for _, s in ipairs({...}) do redis.call('PEXPIRE', base .. s, ttl) end
end
local function ok(form, ...) return {'K', form, ...} end
local function err(code, msg) return {'E', code, msg} end
local function wake(ch, all)
  local nf = 'n' .. ch
  local n = tonumber(redis.call('HGET', base, nf) or '0')
  if n <= 0 then return end
  local k = 1
  if all then k = math.min(n, 256) end
  local wk = base .. ':w' .. ch
  for _ = 1, k do redis.call('RPUSH', wk, '1') end
  redis.call('LTRIM', wk, -256, -1)
  redis.call('PEXPIRE', wk, ttl)
  redis.call('HSET', base, nf, n - k)
end
local function wait(ch, st, nodeadline)
  if final and not nodeadline then
    local n = tonumber(redis.call('HGET', base, 'n' .. ch) or '0')
    if n > 0 then redis.call('HSET', base, 'n' .. ch, n - 1) end
    return {'T'}
  end
  redis.call('HINCRBY', base, 'n' .. ch, 1)
  redis.call('PEXPIRE', base, ttl)
  return {'W', ch, st or '', nodeadline and '1' or '0'}
end
-- Notes that the owner (a host's worker: 'h:HOST/PID') holds something of this object, so a
-- dead host's holdings are found and given back.
local function held()
  local host = string.match(owner, '^h:([^/]+)/')
  if host then
    local holds = prefix .. 'holds:' .. host
    redis.call('SADD', holds, base)
    -- Kept as long as the longest-lived object in it.
    if redis.call('PTTL', holds) < tonumber(ttl) then redis.call('PEXPIRE', holds, ttl) end
    redis.call('SADD', prefix .. 'holders', host)
  end
end
-- Host `host` holds nothing of this object any more: out of its holds.
local function unhold(host)
  redis.call('SREM', prefix .. 'holds:' .. host, base)
end
-- A lock's one holder let go: its host holds nothing of it any more.
local function unheld(o)
  local host = string.match(o, '^h:([^/]+)/')
  if host then unhold(host) end
end
-- Owner `o` gave up its last place in the holders hash `h` (a semaphore's): its host holds
-- nothing of the object once no other owner of that host is there.
local function unheld_in(h, o)
  local host = string.match(o, '^h:([^/]+)/')
  if not host then return end
  local p = 'h:' .. host .. '/'
  for _, other in ipairs(redis.call('HKEYS', h)) do
    if string.sub(other, 1, #p) == p then return end
  end
  unhold(host)
end
-- Every owner in the holders hash `h` lets go (a barrier's waiters, as it is emptied).
local function unheld_all(h)
  local seen = {}
  for _, o in ipairs(redis.call('HKEYS', h)) do
    local host = string.match(o, '^h:([^/]+)/')
    if host and not seen[host] then
      seen[host] = true
      unhold(host)
    end
  end
end
local function invalid() return err('invalid', op .. ' is not an operation of a ' .. (f['name'] or kind)) end
-- What a queue, pipe, dict or list holds, 'sz': its items' bytes and an overhead for each
-- (ITEM an item, ENTRY a dict entry), at most MAX_BYTES, as a local object costs its host.
local MAX_BYTES, ITEM, ENTRY = 268435456, 48, 144
local stored = tonumber(f['sz'] or '0')
-- Changes what the object holds by `delta` bytes; false (nothing changed) past the limit.
local function resize(delta)
  if delta > 0 and stored + delta > MAX_BYTES then return false end
  stored = math.max(stored + delta, 0)
  redis.call('HSET', base, 'sz', stored)
  return true
end
local function too_big()
  return err('toolarge', 'the ' .. (f['name'] or kind) .. ' already holds ' .. stored .. ' bytes (its items and an overhead for each); the limit is ' .. MAX_BYTES .. ': take items out first, or keep large data in a file')
end

if kind == 'queue' then
  local q = key(':q')
  touch(':q')
  if op == 'put' then
    if f['closed'] == '1' then return err('closed', 'the queue is closed') end
    local max = tonumber(f['max'])
    if max > 0 and redis.call('LLEN', q) >= max then return wait('p') end
    if not resize(#a1 + ITEM) then return too_big() end
    redis.call('RPUSH', q, a1)
    redis.call('PEXPIRE', q, ttl)
    if f['j'] == '1' then redis.call('HINCRBY', base, 'u', 1) end
    wake('g', false)
    return ok('u')
  elseif op == 'get' then
    local v = redis.call('LPOP', q)
    if v then
      resize(-(#v + ITEM))
      wake('p', false)
      return ok('v', v)
    end
    if f['closed'] == '1' then return err('closed', 'the queue is closed and empty') end
    return wait('g')
  elseif op == 'qsize' then return ok('c', redis.call('LLEN', q))
  elseif op == 'maxsize' then return ok('c', tonumber(f['max']))
  elseif op == 'close' then
    redis.call('HSET', base, 'closed', '1')
    wake('g', true)
    wake('p', true)
    return ok('u')
  elseif op == 'task_done' then
    if f['j'] ~= '1' then return err('invalid', 'task_done() needs a JoinableQueue') end
    local u = tonumber(f['u'] or '0')
    if u == 0 then return err('invalid', 'task_done() called too many times') end
    redis.call('HSET', base, 'u', u - 1)
    if u == 1 then wake('j', true) end
    return ok('u')
  elseif op == 'join' then
    if f['j'] ~= '1' then return err('invalid', 'join() needs a JoinableQueue') end
    if tonumber(f['u'] or '0') == 0 then return ok('u') end
    return wait('j')
  end
  return invalid()
end

if kind == 'pipe' then
  local me, other = tonumber(e), 1 - tonumber(e)
  touch(':q0', ':q1')
  local duplex = f['duplex'] == '1'
  local closed_me, closed_other = f['c' .. me] == '1', f['c' .. other] == '1'
  if op == 'close' then
    redis.call('HSET', base, 'c' .. me, '1')
    wake('r' .. other, true)
    wake('r' .. me, true)
    return ok('u')
  end
  if closed_me then return err('closed', 'the connection is closed') end
  if op == 'send' then
    if not duplex and me == 0 then return err('invalid', 'this end of a one-way pipe only receives') end
    if closed_other then return err('closed', 'the other end of the pipe is closed') end
    if not resize(#a1 + ITEM) then return too_big() end
    redis.call('RPUSH', key(':q' .. other), a1)
    redis.call('PEXPIRE', key(':q' .. other), ttl)
    wake('r' .. other, false)
    return ok('u')
  end
  if (op == 'recv' or op == 'poll') and not duplex and me == 1 then
    return err('invalid', 'this end of a one-way pipe only sends')
  end
  if op == 'recv' then
    local v = redis.call('LPOP', key(':q' .. me))
    if v then
      resize(-(#v + ITEM))
      return ok('v', v)
    end
    if closed_other then return err('closed', 'end of file: the other end of the pipe is closed') end
    return wait('r' .. me)
  elseif op == 'poll' then
    if redis.call('LLEN', key(':q' .. me)) > 0 or closed_other then return ok('f', 1) end
    return wait('r' .. me)
  end
  return invalid()
end

-- A lock's (or a condition's) owner and count live in the hash: 'o', 'c'; its fence, 'fence',
-- goes up by one at every acquisition and every release of a dead holder.
local function take_lock(recursive)
  local o = f['o'] or ''
  if o == '' then
    redis.call('HSET', base, 'o', owner, 'c', 1)
    redis.call('HINCRBY', base, 'fence', 1)
    held()
    return true
  end
  if recursive and o == owner then
    redis.call('HINCRBY', base, 'c', 1)
    return true
  end
  return false
end
local function release_lock(recursive, any)
  local o = f['o'] or ''
  if o == '' then
    if recursive then return err('notowner', 'cannot release un-acquired lock') end
    return err('notowner', 'release of an unlocked lock')
  end
  if recursive and o ~= owner and not any then
    return err('notowner', 'cannot release un-acquired lock')
  end
  local c = tonumber(f['c'] or '1') - 1
  if c <= 0 or not recursive then
    redis.call('HSET', base, 'o', '', 'c', 0)
    unheld(o)
    wake('l', false)
  else
    redis.call('HSET', base, 'c', c)
  end
  return ok('u')
end

if kind == 'lock' or kind == 'rlock' then
  touch()
  local recursive = kind == 'rlock'
  if op == 'acquire' then
    if take_lock(recursive) then return ok('f', 1) end
    return wait('l')
  elseif op == 'release' then return release_lock(recursive, false)
  elseif op == 'locked' then return ok('f', (f['o'] or '') ~= '' and 1 or 0)
  elseif op == 'fence' then return ok('c', tonumber(f['fence'] or '0'))
  end
  return invalid()
end

if kind == 'semaphore' then
  local h = key(':h')
  touch(':h')
  local v = tonumber(f['v'])
  if op == 'acquire' then
    if v > 0 then
      redis.call('HSET', base, 'v', v - 1)
      redis.call('HINCRBY', h, owner, 1)
      redis.call('PEXPIRE', h, ttl)
      held()
      return ok('f', 1)
    end
    return wait('s')
  elseif op == 'release' then
    if f['b'] == '1' and v >= tonumber(f['init']) then
      return err('notowner', 'semaphore or lock released too many times')
    end
    redis.call('HSET', base, 'v', v + 1)
    -- One outstanding acquisition is gone: the caller's, or someone's it released for.
    local from = owner
    if not redis.call('HGET', h, from) then from = redis.call('HRANDFIELD', h) end
    if from then
      if redis.call('HINCRBY', h, from, -1) <= 0 then
        redis.call('HDEL', h, from)
        unheld_in(h, from)
      end
    end
    wake('s', false)
    return ok('u')
  elseif op == 'value' then return ok('c', v)
  end
  return invalid()
end

if kind == 'event' then
  touch()
  if op == 'set' then
    redis.call('HSET', base, 's', '1')
    wake('e', true)
    return ok('u')
  elseif op == 'clear' then
    redis.call('HSET', base, 's', '0')
    return ok('u')
  elseif op == 'is_set' then return ok('f', f['s'] == '1' and 1 or 0)
  elseif op == 'wait' then
    if f['s'] == '1' then return ok('f', 1) end
    return wait('e')
  end
  return invalid()
end

if kind == 'barrier' then
  -- 'p' parties, 'a' arrived in this round, 'g' the round, 'x' broken, 'rb' a round broken
  -- by a reset, 'ra' the round whose action runs; waiting parties in ':h'. A waiter's state
  -- is 'ROUND:INDEX'.
  local h = key(':h')
  touch(':h')
  local p, a, g = tonumber(f['p']), tonumber(f['a'] or '0'), tonumber(f['g'] or '0')
  local broken = f['x'] == '1'
  local function release_round()
    redis.call('HSET', base, 'a', 0, 'g', g + 1, 'ra', '')
    unheld_all(h)
    redis.call('DEL', h)
    wake('b', true)
  end
  local function break_it()
    redis.call('HSET', base, 'x', '1', 'a', 0, 'ra', '')
    unheld_all(h)
    redis.call('DEL', h)
    wake('b', true)
  end
  if op == 'wait' or op == 'wait_action' then
    if state ~= '' then
      local rg, idx = string.match(state, '^(%d+):(%d+)$')
      rg, idx = tonumber(rg), tonumber(idx)
      if g > rg then
        if f['rb'] == tostring(rg) then return err('broken', 'the barrier is broken') end
        return ok('i', idx)
      end
      if broken then return err('broken', 'the barrier is broken') end
      if final then
        break_it()
        return err('broken', 'the barrier is broken')
      end
      return wait('b', state)
    end
    if broken then return err('broken', 'the barrier is broken') end
    -- The last round's action runs: this party arrives in the next round, after it.
    if (f['ra'] or '') ~= '' then return wait('b') end
    local idx = a
    if idx + 1 >= p then
      if op == 'wait_action' then
        redis.call('HSET', base, 'a', a + 1, 'ra', tostring(g))
        return ok('r', idx)
      end
      release_round()
      return ok('i', idx)
    end
    if final then
      -- Arrived with no time to wait (a zero timeout): the round breaks, as in Python.
      break_it()
      return err('broken', 'the barrier is broken')
    end
    redis.call('HSET', base, 'a', a + 1)
    redis.call('HSET', h, owner, '1')
    redis.call('PEXPIRE', h, ttl)
    held()
    return wait('b', g .. ':' .. idx)
  elseif op == 'action_done' then
    if (f['ra'] or '') ~= tostring(g) then return err('broken', 'the barrier is broken') end
    if a1 == '1' then
      release_round()
      return ok('i', a - 1)
    end
    break_it()
    return ok('u')
  elseif op == 'abort' then
    break_it()
    return ok('u')
  elseif op == 'reset' then
    if a > 0 then redis.call('HSET', base, 'rb', tostring(g)) end
    redis.call('HSET', base, 'x', '0', 'a', 0, 'g', g + 1, 'ra', '')
    unheld_all(h)
    redis.call('DEL', h)
    wake('b', true)
    return ok('u')
  elseif op == 'n_waiting' then return ok('c', a)
  elseif op == 'parties' then return ok('c', p)
  elseif op == 'broken' then return ok('f', broken and 1 or 0)
  end
  return invalid()
end

if kind == 'condition' then
  -- Its own recursive lock ('o', 'c'), and tickets: a waiter takes ticket 'tw'+1; a notify
  -- of n moves 'tn' up by n (at most to 'tw'); a waiter whose ticket is at most 'tn' was
  -- notified. A waiter's state is 'N:TICKET:COUNT' (waiting for a notify) or
  -- 'R:COUNT:NOTIFIED' (re-acquiring the lock, with no deadline).
  touch()
  local o = f['o'] or ''
  local function reacquire(count, notified)
    if o == '' then
      redis.call('HSET', base, 'o', owner, 'c', count)
      held()
      return ok('f', notified and 1 or 0)
    end
    return wait('l', 'R:' .. count .. ':' .. (notified and '1' or '0'), true)
  end
  if op == 'acquire' then
    if take_lock(true) then return ok('f', 1) end
    return wait('l')
  elseif op == 'release' then return release_lock(true, false)
  elseif op == 'locked' then return ok('f', o ~= '' and 1 or 0)
  elseif op == 'wait' then
    if state == '' then
      if o ~= owner then return err('notowner', 'cannot wait on an un-acquired condition') end
      -- No time to wait (a zero timeout): not notified, the lock still held.
      if final then return ok('f', 0) end
      local t = redis.call('HINCRBY', base, 'tw', 1)
      local count = tonumber(f['c'] or '1')
      redis.call('HSET', base, 'o', '', 'c', 0)
      -- Held again when it re-acquires the lock.
      unheld(owner)
      wake('l', false)
      return wait('c', 'N:' .. t .. ':' .. count)
    end
    local phase, x, y = string.match(state, '^(%a):(%d+):(%d+)$')
    if phase == 'N' then
      local notified = tonumber(x) <= tonumber(f['tn'] or '0')
      if notified or final then
        if not notified then
          -- Gone from the wait: a later notify is not spent on it.
          redis.call('HSET', base, 'tx', (tonumber(f['tx'] or '0') + 1))
        end
        return reacquire(tonumber(y), notified)
      end
      return wait('c', state)
    end
    return reacquire(tonumber(x), y == '1')
  elseif op == 'notify' or op == 'notify_all' then
    if o ~= owner then return err('notowner', 'cannot notify on an un-acquired condition') end
    local tw, tn = tonumber(f['tw'] or '0'), tonumber(f['tn'] or '0')
    local n = tw - tn
    if op == 'notify' then n = math.min(n, tonumber(a1) + tonumber(f['tx'] or '0')) end
    redis.call('HSET', base, 'tn', tn + n, 'tx', 0)
    if n > 0 then wake('c', true) end
    return ok('u')
  end
  return invalid()
end

if kind == 'dict' then
  local d = key(':d')
  touch(':d')
  -- What setting k to v (or, v nil, removing k) adds, its old value `old` (nil: absent).
  local function change(k, old, v)
    local delta = 0
    if old then delta = delta - (#k + #old + ENTRY) end
    if v then delta = delta + #k + #v + ENTRY end
    return delta
  end
  if op == 'get' then
    local v = redis.call('HGET', d, a1)
    if v then return ok('m', v) end
    return ok('m')
  elseif op == 'set' then
    if not resize(change(a1, redis.call('HGET', d, a1), a2)) then return too_big() end
    redis.call('HSET', d, a1, a2)
    redis.call('PEXPIRE', d, ttl)
    return ok('u')
  elseif op == 'delete' then
    local old = redis.call('HGET', d, a1)
    if not old then return err('missing', 'KeyError: no such key') end
    redis.call('HDEL', d, a1)
    resize(change(a1, old, nil))
    return ok('u')
  elseif op == 'contains' then return ok('f', redis.call('HEXISTS', d, a1))
  elseif op == 'keys' then return ok('V', redis.call('HKEYS', d))
  elseif op == 'values' then return ok('V', redis.call('HVALS', d))
  elseif op == 'items' then return ok('e', redis.call('HGETALL', d))
  elseif op == 'len' then return ok('c', redis.call('HLEN', d))
  elseif op == 'update' then
    -- Refused whole, before anything changes, if the result would not fit.
    local now, delta = {}, 0
    for i = 8, #ARGV - 1, 2 do
      local k, v = ARGV[i], ARGV[i + 1]
      local old = now[k]
      if old == nil then old = redis.call('HGET', d, k) or false end
      delta = delta + change(k, old or nil, v)
      now[k] = v
    end
    if not resize(delta) then return too_big() end
    for i = 8, #ARGV - 1, 2 do redis.call('HSET', d, ARGV[i], ARGV[i + 1]) end
    redis.call('PEXPIRE', d, ttl)
    return ok('u')
  elseif op == 'setdefault' then
    local v = redis.call('HGET', d, a1)
    if v then return ok('v', v) end
    if not resize(change(a1, nil, a2)) then return too_big() end
    redis.call('HSET', d, a1, a2)
    redis.call('PEXPIRE', d, ttl)
    return ok('v', a2)
  elseif op == 'pop' then
    local v = redis.call('HGET', d, a1)
    if v then
      redis.call('HDEL', d, a1)
      resize(change(a1, v, nil))
      return ok('m', v)
    end
    return ok('m')
  elseif op == 'popitem' then
    local k = redis.call('HRANDFIELD', d)
    if not k then return err('missing', "KeyError: 'popitem(): dictionary is empty'") end
    local v = redis.call('HGET', d, k)
    redis.call('HDEL', d, k)
    resize(change(k, v, nil))
    return ok('e', {k, v})
  elseif op == 'clear' then
    redis.call('DEL', d)
    resize(-stored)
    return ok('u')
  elseif op == 'cas' then
    -- a1 key, a2 '1' if a value is expected, a3 the expected value, ARGV[11] the new one.
    local cur = redis.call('HGET', d, a1)
    local matches
    if a2 == '1' then matches = (cur == a3) else matches = (not cur) end
    if matches then
      if not resize(change(a1, cur or nil, ARGV[11])) then return too_big() end
      redis.call('HSET', d, a1, ARGV[11])
      redis.call('PEXPIRE', d, ttl)
    end
    return ok('f', matches and 1 or 0)
  end
  return invalid()
end

if kind == 'list' then
  local l = key(':L')
  touch(':L')
  local n = redis.call('LLEN', l)
  local function at(i)
    i = tonumber(i)
    if i < 0 then i = i + n end
    if i < 0 or i >= n then return nil end
    return i
  end
  local range = 'IndexError: list index out of range'
  if op == 'append' then
    if not resize(#a1 + ITEM) then return too_big() end
    redis.call('RPUSH', l, a1)
    redis.call('PEXPIRE', l, ttl)
    return ok('u')
  elseif op == 'extend' then
    local delta = 0
    for i = 8, #ARGV do delta = delta + #ARGV[i] + ITEM end
    if not resize(delta) then return too_big() end
    for i = 8, #ARGV, 512 do redis.call('RPUSH', l, unpack(ARGV, i, math.min(i + 511, #ARGV))) end
    redis.call('PEXPIRE', l, ttl)
    return ok('u')
  elseif op == 'get' then
    local i = at(a1)
    if not i then return err('missing', range) end
    return ok('v', redis.call('LINDEX', l, i))
  elseif op == 'set' then
    local i = at(a1)
    if not i then return err('missing', 'IndexError: list assignment index out of range') end
    if not resize(#a2 - #redis.call('LINDEX', l, i)) then return too_big() end
    redis.call('LSET', l, i, a2)
    return ok('u')
  elseif op == 'len' then return ok('c', n)
  elseif op == 'pop' then
    if n == 0 then return err('missing', 'IndexError: pop from empty list') end
    local i = n - 1
    if a1 ~= '' then i = at(a1) end
    if not i then return err('missing', 'IndexError: pop index out of range') end
    local v = redis.call('LINDEX', l, i)
    resize(-(#v + ITEM))
    -- 0xc1 is no MessagePack value: a tombstone no stored item can equal.
    redis.call('LSET', l, i, '\193')
    redis.call('LREM', l, 1, '\193')
    return ok('v', v)
  elseif op == 'index' then
    local i = redis.call('LPOS', l, a1)
    if not i then return err('missing', 'ValueError: the value is not in the list') end
    return ok('c', i)
  elseif op == 'items' then return ok('V', redis.call('LRANGE', l, 0, -1))
  elseif op == 'insert' then
    if not resize(#a2 + ITEM) then return too_big() end
    local i = tonumber(a1)
    if i < 0 then i = math.max(i + n, 0) end
    if i >= n then
      redis.call('RPUSH', l, a2)
    elseif i == 0 then
      redis.call('LPUSH', l, a2)
    else
      local old = redis.call('LINDEX', l, i)
      redis.call('LSET', l, i, '\193')
      redis.call('LINSERT', l, 'BEFORE', '\193', a2)
      redis.call('LSET', l, i + 1, old)
    end
    redis.call('PEXPIRE', l, ttl)
    return ok('u')
  elseif op == 'remove' then
    if redis.call('LREM', l, 1, a1) == 0 then
      return err('missing', 'ValueError: list.remove(x): x not in list')
    end
    resize(-(#a1 + ITEM))
    return ok('u')
  elseif op == 'clear' then
    redis.call('DEL', l)
    resize(-stored)
    return ok('u')
  elseif op == 'slice' then
    local function bound(s, default)
      if s == '' then return default end
      s = tonumber(s)
      if s < 0 then s = math.max(s + n, 0) end
      return math.min(s, n)
    end
    local s, t = bound(a1, 0), bound(a2, n)
    if t <= s then return ok('V', {}) end
    return ok('V', redis.call('LRANGE', l, s, t - 1))
  end
  return invalid()
end
return err('invalid', 'not an object of this version of wasmpool: ' .. tostring(kind))
"#;

/// Sets how long an object is kept once idle, from now: its `ttl` field (which every
/// operation renews its keys by) and the expiry of each of its keys. A ttl of 0 removes the
/// object now (Redis deletes a key given an expiry not in the future): handles to it are
/// stale from then on, and a waiter finds it gone at its next poll.
///
/// KEYS: the object's hash. ARGV: end, token, ttl (ms). Returns 1, or 0 when there is no
/// such object (expired, or the token is not its).
pub(crate) const SET_TTL: &str = r#"
local base = KEYS[1]
if redis.call('HGET', base, 't' .. ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', base, 'ttl', ARGV[3])
-- Every key OBJECT_OP makes: the containers and each wait channel's wake list (a pipe's
-- are its ends' receive channels, r0 and r1).
for _, s in ipairs({'', ':q', ':q0', ':q1', ':h', ':d', ':L', ':wb', ':wc', ':we', ':wg', ':wj', ':wl', ':wp', ':wr0', ':wr1', ':ws'}) do
  redis.call('PEXPIRE', base .. s, ARGV[3])
end
return 1
"#;

/// Makes an object: takes the next free object number and writes its hash.
///
/// KEYS: the object counter. ARGV: key prefix, ttl (ms), then the hash's field/value pairs.
/// Returns the object number (even, below 2^28).
pub(crate) const CREATE: &str = r#"
for _ = 1, 64 do
  local n = redis.call('INCRBY', KEYS[1], 2) % 268435456
  if n > 0 then
    local base = ARGV[1] .. 'o:' .. n
    if redis.call('EXISTS', base) == 0 then
      redis.call('HSET', base, 'ttl', ARGV[2], unpack(ARGV, 3))
      redis.call('PEXPIRE', base, ARGV[2])
      return n
    end
  end
end
return redis.error_reply('no free object number in this Redis')
"#;

/// Gives back what owners whose name starts with a prefix held: a lock's ownership (its
/// fence advanced), a semaphore's acquisitions, a condition's lock; a barrier they waited at
/// is broken. With no prefix given, it does so for every host whose lease has expired (or
/// that has none), for all of the host's owners, forgets the host's holdings, and records
/// the host as declared dead now (`dead`: the operations of its tasks are refused from then
/// on). An object none of the host's owners holds any more leaves the host's `holds` (a
/// barrier it breaks leaves every waiting host's).
///
/// KEYS: hosts, holders. ARGV: key prefix, owner prefix (or ""), host (with an owner
/// prefix). Returns how many objects it changed.
pub(crate) const RELEASE: &str = r#"
local prefix = ARGV[1]
local changed = 0
local function wake(base, ch, ttl)
  local nf = 'n' .. ch
  local n = tonumber(redis.call('HGET', base, nf) or '0')
  if n <= 0 then return end
  local k = math.min(n, 256)
  local wk = base .. ':w' .. ch
  for _ = 1, k do redis.call('RPUSH', wk, '1') end
  redis.call('LTRIM', wk, -256, -1)
  redis.call('PEXPIRE', wk, ttl)
  redis.call('HSET', base, nf, n - k)
end
local function starts(s, p) return string.sub(s, 1, #p) == p end
-- Whether an owner named `p…` is among the fields of hash `h`.
local function any_in(h, p)
  for _, o in ipairs(redis.call('HKEYS', h)) do
    if starts(o, p) then return true end
  end
  return false
end
-- Gives back what owners `who…` held of the object `base` (of kind `kind`).
local function give_back(base, kind, who)
  local ttl = redis.call('HGET', base, 'ttl') or '60000'
  if kind == 'lock' or kind == 'rlock' or kind == 'condition' then
    local o = redis.call('HGET', base, 'o') or ''
    if o ~= '' and starts(o, who) then
      redis.call('HSET', base, 'o', '', 'c', 0)
      redis.call('HINCRBY', base, 'fence', 1)
      wake(base, 'l', ttl)
      changed = changed + 1
    end
  elseif kind == 'semaphore' then
    local h = redis.call('HGETALL', base .. ':h')
    local back = 0
    for i = 1, #h, 2 do
      if starts(h[i], who) then
        back = back + tonumber(h[i + 1])
        redis.call('HDEL', base .. ':h', h[i])
      end
    end
    if back > 0 then
      local v = tonumber(redis.call('HGET', base, 'v')) + back
      if redis.call('HGET', base, 'b') == '1' then
        v = math.min(v, tonumber(redis.call('HGET', base, 'init')))
      end
      redis.call('HSET', base, 'v', v)
      wake(base, 's', ttl)
      changed = changed + 1
    end
  elseif kind == 'barrier' then
    local h = redis.call('HKEYS', base .. ':h')
    for _, o in ipairs(h) do
      if starts(o, who) then
        redis.call('HSET', base, 'x', '1', 'a', 0, 'ra', '')
        -- Every waiter lets go, on every host.
        for _, w in ipairs(h) do
          local host = string.match(w, '^h:([^/]+)/')
          if host then redis.call('SREM', prefix .. 'holds:' .. host, base) end
        end
        redis.call('DEL', base .. ':h')
        wake(base, 'b', ttl)
        changed = changed + 1
        break
      end
    end
  end
end
-- Gives back what owners `who…` held of the object `base`; then, when no owner of the
-- host (`hostp…`) holds anything of it any more, takes it out of the host's `holds`.
local function release(base, who, holds, hostp)
  local kind = redis.call('HGET', base, 'k')
  if not kind then
    -- Expired: nothing to give back, nothing to remember.
    redis.call('SREM', holds, base)
    return
  end
  give_back(base, kind, who)
  local still = false
  if kind == 'lock' or kind == 'rlock' or kind == 'condition' then
    still = starts(redis.call('HGET', base, 'o') or '', hostp)
  elseif kind == 'semaphore' or kind == 'barrier' then
    still = any_in(base .. ':h', hostp)
  end
  if not still then redis.call('SREM', holds, base) end
end
if ARGV[2] ~= '' then
  local holds = prefix .. 'holds:' .. ARGV[3]
  for _, base in ipairs(redis.call('SMEMBERS', holds)) do
    release(base, ARGV[2], holds, 'h:' .. ARGV[3] .. '/')
  end
  return changed
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, host in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local lease = redis.call('ZSCORE', KEYS[1], host)
  if (not lease) or tonumber(lease) < now then
    redis.call('ZADD', prefix .. 'dead', now, host)
    local holds = prefix .. 'holds:' .. host
    for _, base in ipairs(redis.call('SMEMBERS', holds)) do
      release(base, 'h:' .. host .. '/', holds, 'h:' .. host .. '/')
    end
    redis.call('DEL', holds)
    redis.call('SREM', KEYS[2], host)
  end
end
return changed
"#;
