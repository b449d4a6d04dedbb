//! How much memory this process may still take, and the one check every plan makes before it
//! allocates what it implies. The idea: a size from the user becomes an allocation only after
//! [`check`] has compared it with [`available_bytes`], so a huge `--window` or `--test-size`
//! is a one-line refusal instead of an abort on allocation (which would leave the output's
//! lock and staging behind).

use crate::error::{Error, Result};

/// Bytes this process can still allocate: `MemAvailable` from `/proc/meminfo`, lowered by the
/// cgroup's limit (v2 `memory.max`, v1 `memory.limit_in_bytes`, minus what the cgroup uses)
/// and by the address-space limit (`ulimit -v`, minus this process's size) when either is set.
/// `u64::MAX` where none of them can be read (not Linux).
pub fn available_bytes() -> u64 {
    let mut available = meminfo_available().unwrap_or(u64::MAX);
    if let Some(room) = cgroup_room() {
        available = available.min(room);
    }
    if let Some(room) = address_space_room() {
        available = available.min(room);
    }
    available
}

/// Refuses an allocation of `bytes` for `what` (which names the flags it comes from) when it
/// exceeds [`available_bytes`].
///
/// # Errors
/// [`Error::Memory`]: "needs X GiB for <what>, Y GiB available".
pub fn check(what: &str, bytes: u64) -> Result<()> {
    check_against(what, bytes, available_bytes())
}

/// [`check`] against a given amount (the pure part, for tests).
///
/// # Errors
/// As [`check`].
pub fn check_against(what: &str, bytes: u64, available: u64) -> Result<()> {
    if bytes <= available {
        return Ok(());
    }
    Err(Error::Memory {
        what: what.to_string(),
        needed: bytes,
        available,
    })
}

/// The runner's check: two units in flight per rank ([`super::Operation::memory_per_unit`]
/// twice), before the output is locked or staged; nothing for `--dry-run`, which allocates
/// nothing and reports the figure instead.
///
/// # Errors
/// As [`check`].
pub fn check_run<Op: super::Operation>(op: &Op, options: &super::RunOptions) -> Result<()> {
    if options.dry_run {
        return Ok(());
    }
    check(
        &format!("{} (two units in flight per rank)", op.name()),
        op.memory_per_unit().saturating_mul(2),
    )
}

fn meminfo_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    kib_field(&text, "MemAvailable:")
}

/// `Name:   1234 kB` -> bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

fn read_number(path: &str) -> Option<u64> {
    // "max" (v2) and absurdly large values (v1's "no limit") both mean no limit.
    std::fs::read_to_string(path)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&v: &u64| v < (1u64 << 60))
}

/// The cgroup's limit minus its usage, when a limit is set.
fn cgroup_room() -> Option<u64> {
    let groups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in groups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        // Inside a container the group's path is often not mounted under its own name; the
        // container's root group is then the one that limits it.
        let (root, limit, usage) = match controllers {
            "" => ("/sys/fs/cgroup", "memory.max", "memory.current"),
            c if c.split(',').any(|c| c == "memory") => (
                "/sys/fs/cgroup/memory",
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            ),
            _ => continue,
        };
        for dir in [format!("{root}{path}"), root.to_string()] {
            if let Some(max) = read_number(&format!("{dir}/{limit}")) {
                let used = read_number(&format!("{dir}/{usage}")).unwrap_or(0);
                return Some(max.saturating_sub(used));
            }
        }
    }
    None
}

/// `ulimit -v` minus this process's current size, when a limit is set.
fn address_space_room() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one plain struct that we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let size = kib_field(&status, "VmSize:").unwrap_or(0);
    Some(limit.rlim_cur.saturating_sub(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_more_than_available_in_one_line() {
        assert!(check_against("x", 10, 10).is_ok());
        let e = check_against("--test-size 4096 patterns", 3 << 30, 1 << 30)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "needs 3.0 GiB for --test-size 4096 patterns, 1.0 GiB available"
        );
    }

    #[test]
    fn this_machine_reports_something() {
        assert!(available_bytes() > 0);
        assert!(check("a byte", 1).is_ok());
        assert!(check("everything", u64::MAX).is_err());
    }

    #[test]
    fn reads_meminfo_lines() {
        let text = "MemTotal:       16 kB\nMemAvailable:    8 kB\n";
        assert_eq!(kib_field(text, "MemAvailable:"), Some(8192));
        assert_eq!(kib_field(text, "Nope:"), None);
    }
}
