//! Threads per rank: how wide each rank's rayon pool is. Every rank used to start a pool as wide
//! as the CPUs it may run on, so `mpirun -n 16 --bind-to none` on 16 cores ran 256 threads. The
//! default now divides the CPUs of a rank's affinity mask among the ranks of its node whose masks
//! overlap it (at least 1); `--threads N` or `RAYON_NUM_THREADS` override.

use std::sync::OnceLock;

use serde::Serialize;

use crate::comm::Comm;
use crate::error::{Error, Result};

/// What this rank runs with, and why (for the run report).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ThreadPlan {
    pub threads: usize,
    /// `--threads`, `RAYON_NUM_THREADS`, or `affinity` (the default).
    pub source: &'static str,
    /// CPUs in this rank's affinity mask.
    pub cpus: usize,
    /// Ranks of this node whose masks overlap this rank's (this one included).
    pub sharing: usize,
}

static PLAN: OnceLock<ThreadPlan> = OnceLock::new();

/// The plan [`configure`] settled on (or the pool's width when it was not called).
pub fn plan() -> ThreadPlan {
    PLAN.get().cloned().unwrap_or_else(|| ThreadPlan {
        threads: rayon::current_num_threads(),
        source: "rayon default",
        cpus: affinity().len(),
        sharing: 1,
    })
}

/// The CPUs this process may run on (its affinity mask); all online CPUs where that cannot be
/// read.
pub fn affinity() -> Vec<usize> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it for this process.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let ok =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        if ok == 0 {
            let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
                // SAFETY: CPU_ISSET reads one bit of the set we own.
                .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
                .collect();
            if !cpus.is_empty() {
                return cpus;
            }
        }
    }
    (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
}

/// Threads for a rank with CPUs `mine` among the masks of every rank of its node (its own
/// included): its CPUs divided by the ranks whose masks overlap them, at least 1. Returns
/// (threads, sharing).
pub fn default_threads(mine: &[usize], node: &[Vec<usize>]) -> (usize, usize) {
    let overlaps = |other: &Vec<usize>| other.iter().any(|c| mine.binary_search(c).is_ok());
    let sharing = node.iter().filter(|m| overlaps(m)).count().max(1);
    ((mine.len() / sharing).max(1), sharing)
}

/// Decides this rank's threads and builds the global rayon pool (collective: every rank calls
/// it, before any parallel work).
///
/// # Errors
/// `--threads 0`.
pub fn configure(flag: Option<usize>, comm: &dyn Comm) -> Result<ThreadPlan> {
    if flag == Some(0) {
        return Err(Error::parameter("threads", "must be at least 1"));
    }
    let mut mine = affinity();
    mine.sort_unstable();
    // Every rank's host and mask, to find the ranks of this node that share its CPUs.
    let host = crate::comm::hostname();
    let sent = serde_json::to_vec(&(&host, &mine)).unwrap_or_default();
    let node: Vec<Vec<usize>> = comm
        .all_gather(&sent)
        .iter()
        .filter_map(|b| serde_json::from_slice::<(String, Vec<usize>)>(b).ok())
        .filter(|(h, _)| *h == host)
        .map(|(_, m)| m)
        .collect();
    let (default, sharing) = default_threads(&mine, &node);
    let rayon_env = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0);
    let (threads, source) = match (flag, rayon_env) {
        (Some(n), _) => (n, "--threads"),
        (None, Some(n)) => (n, "RAYON_NUM_THREADS"),
        (None, None) => (default, "affinity"),
    };
    // Fails only if a pool was built already (tests in one process); the width is then that pool's.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    let plan = ThreadPlan {
        threads: rayon::current_num_threads(),
        source,
        cpus: mine.len(),
        sharing,
    };
    let _ = PLAN.set(plan.clone());
    tracing::debug!(
        "rank {}: {} threads ({source}; {} CPUs in its affinity mask, shared by {sharing} rank(s) of this node)",
        comm.rank(),
        plan.threads,
        plan.cpus
    );
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_are_divided_among_the_ranks_that_share_them() {
        let all: Vec<usize> = (0..16).collect();
        // mpirun -n 16 --bind-to none: everyone may run everywhere: 1 thread each.
        assert_eq!(default_threads(&all, &vec![all.clone(); 16]), (1, 16));
        // 4 ranks unbound on 16 CPUs: 4 each.
        assert_eq!(default_threads(&all, &vec![all.clone(); 4]), (4, 4));
        // --bind-to core: a CPU each, nobody shares.
        let own: Vec<Vec<usize>> = (0..16).map(|c| vec![c]).collect();
        assert_eq!(default_threads(&[3], &own), (1, 1));
        // --map-by slot:PE=4 --bind-to core (srun --cpus-per-task=4): 4 disjoint CPUs each.
        let quads: Vec<Vec<usize>> = (0..4).map(|q| (4 * q..4 * q + 4).collect()).collect();
        assert_eq!(default_threads(&quads[1], &quads), (4, 1));
        // More ranks than CPUs: still one thread.
        assert_eq!(default_threads(&[0, 1], &vec![vec![0, 1]; 5]), (1, 5));
        // One process.
        assert_eq!(default_threads(&all, std::slice::from_ref(&all)), (16, 1));
    }

    #[test]
    fn this_process_has_an_affinity_mask() {
        let cpus = affinity();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]));
    }
}
