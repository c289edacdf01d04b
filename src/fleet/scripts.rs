//! The Redis commands and Lua scripts of fleet mode. Scripts run atomically
//! and go by EVALSHA (falling back to EVAL once per server).

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{Cmd, Script, ScriptInvocation};

/// One command or script call, ready to run.
pub enum Request {
    /// A plain command.
    Cmd(Cmd),
    /// A script invocation.
    Script(ScriptInvocation<'static>),
}

impl Request {
    /// Runs it on `connection`.
    pub async fn run<T: redis::FromRedisValue, C: ConnectionLike>(
        self,
        connection: &mut C,
    ) -> redis::RedisResult<T> {
        match self {
            Request::Cmd(cmd) => cmd.query_async(connection).await,
            Request::Script(invocation) => invocation.invoke_async(connection).await,
        }
    }
}

/// Milliseconds by Redis's clock, so that every replica counts alike.
const NOW_MS: &str = "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

/// KEYS[1] = slot set; ARGV = limit, token, lease ms. A slot is a member
/// scored with the instant it frees; expired members are dropped first.
static ACQUIRE_SLOT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW_MS}redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], 600000)
  return 1
end
return 0"
    ))
});

/// KEYS[1] = slot set; ARGV = token, hold ms: the slot frees `hold` after now.
static RELEASE_SLOT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW_MS}return redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])"
    ))
});

/// Compare-and-delete: only the holder's token releases the lease.
static RELEASE_LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0",
    )
});

/// Compare-and-extend: only the holder's token renews the lease.
static RENEW_LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0",
    )
});

/// Deletes every key matching ARGV[1] (admin purge; rare). KEYS[1] only
/// routes the script to the node of the gateway's hash slot in a cluster.
static DELETE_MATCHING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local cursor = '0'
local n = 0
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = r[1]
  for _, k in ipairs(r[2]) do n = n + redis.call('DEL', k) end
until cursor == '0'
return n",
    )
});

/// Takes a fleet rate slot if fewer than `limit` are busy.
pub fn acquire_slot(key: &str, limit: usize, token: &str, lease_ms: u64) -> Request {
    let mut invocation = ACQUIRE_SLOT.prepare_invoke();
    invocation.key(key).arg(limit).arg(token).arg(lease_ms);
    Request::Script(invocation)
}

/// Marks a slot free `hold_ms` from now.
pub fn release_slot(key: &str, token: &str, hold_ms: u64) -> Request {
    let mut invocation = RELEASE_SLOT.prepare_invoke();
    invocation.key(key).arg(token).arg(hold_ms);
    Request::Script(invocation)
}

/// Releases a lease held with `token`.
pub fn release_lease(key: &str, token: &str) -> Request {
    let mut invocation = RELEASE_LEASE.prepare_invoke();
    invocation.key(key).arg(token);
    Request::Script(invocation)
}

/// Extends a lease held with `token`.
pub fn renew_lease(key: &str, token: &str, ttl_ms: u64) -> Request {
    let mut invocation = RENEW_LEASE.prepare_invoke();
    invocation.key(key).arg(token).arg(ttl_ms);
    Request::Script(invocation)
}

/// Deletes every key matching `pattern`, on the node that holds `route_key`.
pub fn delete_matching(route_key: &str, pattern: &str) -> Request {
    let mut invocation = DELETE_MATCHING.prepare_invoke();
    invocation.key(route_key).arg(pattern);
    Request::Script(invocation)
}

/// `GET key`.
pub fn get(key: &str) -> Request {
    Request::Cmd(redis::cmd("GET").arg(key).to_owned())
}

/// `SET key value PX ttl`.
pub fn set_px(key: &str, value: &str, ttl_ms: u64) -> Request {
    Request::Cmd(
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(ttl_ms)
            .to_owned(),
    )
}

/// `SET key value NX PX ttl`: true when it was set.
pub fn set_nx_px(key: &str, value: &str, ttl_ms: u64) -> Request {
    Request::Cmd(
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .to_owned(),
    )
}

/// `DEL key`.
pub fn del(key: &str) -> Request {
    Request::Cmd(redis::cmd("DEL").arg(key).to_owned())
}

/// `PUBLISH channel message`.
pub fn publish(channel: &str, message: &str) -> Request {
    Request::Cmd(redis::cmd("PUBLISH").arg(channel).arg(message).to_owned())
}

/// `PING`.
pub fn ping() -> Request {
    Request::Cmd(redis::cmd("PING"))
}
