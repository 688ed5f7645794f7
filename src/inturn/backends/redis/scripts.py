"""The Lua scripts of the Redis backend: joining, burying, leaving, marking and claiming.

A line's shared turns are also in a set of their ids, so that one look tells modes apart.
Each runs atomically (no other command runs while a script does: redis.io, "Scripting with
Lua"), and every key it touches is passed in ``KEYS``, as Redis requires of scripts. See
``store.py`` for the keys. Times kept in a ticket (``joined_at``, ``acquired_at``) are the
server's clock (``TIME``), the one clock every host of a line shares; readers move them onto
their own.

The client sends a command again when its connection drops before the answer comes (see
``store.py``), so each script may run twice: run again, it changes nothing more and answers
as it did (a join finds its ticket id in line, a leave finds it gone, a burial finds its
marker, a claim finds the record it took).
"""

import hashlib
import re

JOIN = """
local known = redis.call('ZSCORE', KEYS[2], ARGV[1])
if known then return known end
local now = redis.call('TIME')
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], string.format('%.0f', now[1] * 1000 + math.floor(now[2] / 1000)))
end
local number = string.format('%.0f', redis.call('INCR', KEYS[1]))
redis.call('ZADD', KEYS[2], number, ARGV[1])
redis.call('HSET', KEYS[3], 'number', number, unpack(ARGV, 4))
redis.call('HSET', KEYS[3], 'joined_at', string.format('%d.%06d', now[1], now[2]))
redis.call('SET', KEYS[4], '1', 'PX', ARGV[2])
if ARGV[3] == '1' then redis.call('SADD', KEYS[5], ARGV[1]) end
return number
"""

BURY = """
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local number = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not number then
  if redis.call('ZSCORE', KEYS[4], ARGV[1]) then return 1 end
  return -2
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[6], ARGV[1])
local marked = 0
if redis.call('HEXISTS', KEYS[2], 'acquired_at') == 1 then
  redis.call('ZADD', KEYS[4], number, ARGV[1])
  marked = 1
else
  redis.call('DEL', KEYS[2])
end
redis.call('XADD', KEYS[5], 'MAXLEN', '1', '*', 'dead', number)
redis.call('PEXPIRE', KEYS[5], ARGV[2])
return marked
"""

# Takes a ticket out of the line. KEYS: tickets, ticket, lease, its "gone" stream, shared,
# kick, abandoned; ARGV: ticket id, the stream's life in ms, and "1" when its turn was lost
# while held: such a turn ended uncleanly, so it leaves as a death (a marker for the next
# holder, "dead" in its stream), not as a release.
LEAVE = """
redis.call('DEL', KEYS[3], KEYS[6])
redis.call('SREM', KEYS[5], ARGV[1])
local number = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not number then return 1 end
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[3] == '1' and redis.call('HEXISTS', KEYS[2], 'acquired_at') == 1 then
  redis.call('ZADD', KEYS[7], number, ARGV[1])
  redis.call('XADD', KEYS[4], 'MAXLEN', '1', '*', 'dead', number)
else
  redis.call('DEL', KEYS[2])
  redis.call('XADD', KEYS[4], 'MAXLEN', '1', '*', 'left', '1')
end
redis.call('PEXPIRE', KEYS[4], ARGV[2])
return 1
"""

# Records a turn as held, if the ticket is still in line and its lease alive. KEYS: tickets,
# ticket, lease, then any "gone" streams of tickets waited on, each of which must end with
# "left" (a clean release); ARGV: ticket id. A waiter sends it with streams right behind its
# XREAD on the same connection, so that the server runs it as the read ends;
# ``mark_acquired`` sends it with none.
MARK = """
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
for index = 4, #KEYS do
  local last = redis.call('XREVRANGE', KEYS[index], '+', '-', 'COUNT', 1)
  if #last == 0 or last[1][2][1] ~= 'left' then return 0 end
end
local now = redis.call('TIME')
redis.call('HSET', KEYS[2], 'acquired_at', string.format('%d.%06d', now[1], now[2]))
return 1
"""

# Takes an abandonment marker. KEYS: abandoned, the dead ticket's record, where the claimed
# record is kept; ARGV: the dead ticket's id, the claimer's ticket id, how long (ms) the claimed
# record is kept. The claimer may send it twice (its client sends a command again when the
# connection drops before the answer came): then the marker is gone, and the claimer is given
# the record it claimed again, rather than nothing, which would tell it no holder died.
CLAIM = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], 'claimed_by', ARGV[2])
  redis.call('RENAME', KEYS[2], KEYS[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
elseif redis.call('HGET', KEYS[3], 'claimed_by') ~= ARGV[2] then
  return false
end
return redis.call('HGETALL', KEYS[3])
"""

# Names the process that now holds a turn (the command of ``inturn run``) in the ticket's record,
# while the ticket is in line: a record that left or was buried is not made again. KEYS:
# tickets, ticket; ARGV: ticket id, pid.
NOTE = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], 'pid', ARGV[2])
return 1
"""

FORGET = """
if redis.call('ZCARD', KEYS[1]) > 0 then return 0 end
redis.call('SREM', KEYS[3], ARGV[1])
for index = 4, #KEYS do redis.call('DEL', KEYS[index]) end
redis.call('DEL', KEYS[2])
return 1
"""

# Which of the commands in ARGV the user may run, asked before the first join so that a user
# missing a grant is refused with its name rather than let in to fail as it hands over (a
# leave that cannot write its stream wakes nobody). ARGV holds each command as its word count
# and its words. Answers the places (from 1) of those denied, or -1 where ACLs cannot be asked
# from a script (``redis.acl_check_cmd`` came with Redis 7; there are no ACLs before 6). A
# command the server does not know (``rename-command`` renamed or disabled it) answers its
# place negated: inturn would be let in to fail as it hands over or claims a dead turn.
CAN_RUN = """
if not redis.acl_check_cmd then return -1 end
local denied, at, place = {}, 1, 1
while at <= #ARGV do
  local count = tonumber(ARGV[at])
  local ok, allowed = pcall(redis.acl_check_cmd, unpack(ARGV, at + 1, at + count))
  if not ok then denied[#denied + 1] = -place
  elseif not allowed then denied[#denied + 1] = place end
  at, place = at + count + 1, place + 1
end
return denied
"""

_BY_DIGEST = {
    hashlib.sha1(source.encode()).hexdigest(): source
    for source in (JOIN, BURY, LEAVE, MARK, CLAIM, NOTE, FORGET)
}
_CALL = re.compile(r"redis\.p?call\('(\w+)'")


def command_at(digest: str, line: int) -> str | None:
    """The command that one of these scripts calls on ``line`` (as Redis numbers the lines of
    the script whose SHA-1 is ``digest``): the one a refusal from inside a script was about."""
    source = _BY_DIGEST.get(digest.lower())
    lines = source.split("\n") if source is not None else []
    found = _CALL.search(lines[line - 1]) if 0 < line <= len(lines) else None
    return found.group(1) if found is not None else None
