"""The rollout lease in Redis: ``<prefix>:rollout:lease``, one JSON value (holder, version, since)
with a TTL. One rollout at a time holds it, from ``prepare`` to ``promote`` or ``rollback``;
every stage check extends it, so a rollout whose worker died frees the mesh after the TTL.

Every change is one Lua script (atomic): take it if free, extend or release it only when the
holder matches (compare-and-set, so a late task of an ended rollout cannot free a newer one's
lease). ``break_`` deletes whatever is there: the operator's abort.
"""

from __future__ import annotations

from typing import Any

from healmesh.control import keys
from healmesh.policies.rollout import Lease

_HOLDER = """
local function holds(v, holder)
  local ok, d = pcall(cjson.decode, v)
  return ok and type(d) == 'table' and d.holder == holder
end
"""
_ACQUIRE = _HOLDER + """
local v = redis.call('get', KEYS[1])
if not v then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[3])
  return ARGV[1]
end
if holds(v, ARGV[2]) then redis.call('pexpire', KEYS[1], ARGV[3]) end
return v
"""
_REFRESH = _HOLDER + """
local v = redis.call('get', KEYS[1])
if v and holds(v, ARGV[1]) then redis.call('pexpire', KEYS[1], ARGV[2]) end
return v
"""
_RELEASE = _HOLDER + """
local v = redis.call('get', KEYS[1])
if v and holds(v, ARGV[1]) then return redis.call('del', KEYS[1]) end
return 0
"""


class LeaseStore:
    def __init__(self, redis: Any, prefix: str, key: str | None = None) -> None:
        self.redis = redis
        self.key = key or keys.lease(prefix)  # another key: another lease (the archiver's)

    def current(self) -> Lease | None:
        return Lease.decode(self.redis.get(self.key))

    def acquire(self, lease: Lease, ttl_s: float) -> Lease | None:
        """Take the lease if it is free (or extend it if ``lease.holder`` has it); returns the
        lease as it now is: ours when taken, someone else's when not."""
        raw = self.redis.eval(_ACQUIRE, 1, self.key, lease.encode(), lease.holder, int(ttl_s * 1000))
        return Lease.decode(raw)

    def refresh(self, holder: str, ttl_s: float) -> Lease | None:
        """Extend the lease if ``holder`` has it; returns the lease as it is (None: nobody has it)."""
        return Lease.decode(self.redis.eval(_REFRESH, 1, self.key, holder, int(ttl_s * 1000)))

    def release(self, holder: str) -> bool:
        """Free the lease if ``holder`` has it (compare-and-delete)."""
        return bool(self.redis.eval(_RELEASE, 1, self.key, holder))

    def break_(self) -> Lease | None:
        """Delete the lease whoever holds it (an explicit abort); returns what was there."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.get(self.key)
        pipe.delete(self.key)
        raw, _ = pipe.execute()
        return Lease.decode(raw)
