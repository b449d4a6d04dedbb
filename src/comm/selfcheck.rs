//! A self-checking exercise of every collective, run by `tessera debug comm-check` under
//! `mpirun -n 1, 2, 4` in the tests (MPI can start once per process, so MPI tests are
//! programs, not in-process test functions). Each check uses rank-dependent data whose
//! result every rank can predict.

use serde::{Deserialize, Serialize};

use super::{Comm, ReduceOp};

/// Where one rank runs: the facts that differ between nodes (printed by `debug comm-check`,
/// so tests on emulated nodes can check them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub rank: usize,
    pub host: String,
    /// Its index among its node's ranks, and their number ([`Comm::node_local`]).
    pub node_rank: usize,
    pub node_size: usize,
    /// Its thread pool's width (exec::threads decides it from its node's CPUs).
    pub threads: usize,
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rank {} on {}: node rank {} of {}, {} thread(s)",
            self.rank, self.host, self.node_rank, self.node_size, self.threads
        )
    }
}

/// Every rank's placement, in rank order, on every rank (collective).
pub fn placements(comm: &dyn Comm, threads: usize) -> Vec<Placement> {
    let (node_rank, node_size) = comm.node_local();
    let mine = Placement {
        rank: comm.rank(),
        host: super::hostname(),
        node_rank,
        node_size,
        threads,
    };
    let sent = serde_json::to_vec(&mine).unwrap_or_default();
    comm.all_gather(&sent)
        .iter()
        .filter_map(|b| serde_json::from_slice(b).ok())
        .collect()
}

/// Where MPI's node split disagrees with the host names: a node's ranks, in rank order,
/// must be its node ranks 0, 1, ... of as many as the host has.
pub fn misplaced(all: &[Placement]) -> Vec<String> {
    all.iter()
        .filter_map(|p| {
            let same_host: Vec<usize> = all
                .iter()
                .filter(|q| q.host == p.host)
                .map(|q| q.rank)
                .collect();
            let index = same_host.iter().position(|&r| r == p.rank);
            (index != Some(p.node_rank) || same_host.len() != p.node_size).then(|| {
                format!(
                    "{p}, but {} has ranks {same_host:?} (node split and host names disagree)",
                    p.host
                )
            })
        })
        .collect()
}

/// The failures found so far, each naming the rank and the check.
struct Checks {
    rank: usize,
    size: usize,
    failures: Vec<String>,
}

impl Checks {
    fn check(&mut self, name: &str, ok: bool, detail: String) {
        if !ok {
            let (rank, size) = (self.rank, self.size);
            self.failures
                .push(format!("rank {rank}/{size}: {name}: {detail}"));
        }
    }
}

/// Runs every check; returns the failures (empty when all pass).
pub fn run(comm: &dyn Comm) -> Vec<String> {
    let mut c = Checks {
        rank: comm.rank(),
        size: comm.size(),
        failures: Vec::new(),
    };
    comm.barrier();
    check_reductions(comm, &mut c);
    check_gathers(comm, &mut c);
    check_exchanges(comm, &mut c);
    check_failure_votes(comm, &mut c);
    comm.barrier();
    c.failures
}

/// all_reduce of f64 and u64 values: sums, minima, maxima.
fn check_reductions(comm: &dyn Comm, c: &mut Checks) {
    let (rank, size) = (c.rank, c.size);
    let mut v = [rank as f64 + 0.5, -(rank as f64)];
    comm.all_reduce_f64(&mut v, ReduceOp::Sum);
    let want = [
        (0..size).map(|r| r as f64 + 0.5).sum::<f64>(),
        -((0..size).sum::<usize>() as f64),
    ];
    c.check(
        "all_reduce f64 sum",
        v == want,
        format!("{v:?} != {want:?}"),
    );
    let mut v = [rank as f64, 10.0 - rank as f64];
    comm.all_reduce_f64(&mut v, ReduceOp::Min);
    c.check(
        "all_reduce f64 min",
        v == [0.0, 10.0 - (size - 1) as f64],
        format!("{v:?}"),
    );
    let mut v = [rank as u64 * 3, 7];
    comm.all_reduce_u64(&mut v, ReduceOp::Max);
    c.check(
        "all_reduce u64 max",
        v == [(size as u64 - 1) * 3, 7],
        format!("{v:?}"),
    );
    let mut v = [rank as u64 + 1];
    comm.all_reduce_u64(&mut v, ReduceOp::Sum);
    c.check(
        "all_reduce u64 sum",
        v[0] == (size * (size + 1) / 2) as u64,
        format!("{v:?}"),
    );
}

/// gather (variable lengths, to the last rank), all_gather and broadcast.
fn check_gathers(comm: &dyn Comm, c: &mut Checks) {
    let (rank, size) = (c.rank, c.size);
    // Variable-length gather: rank r sends r+1 bytes of value r.
    let mine = vec![rank as u8; rank + 1];
    let root = size - 1;
    let gathered = comm.gather(&mine, root);
    if rank == root {
        let want: Vec<Vec<u8>> = (0..size).map(|r| vec![r as u8; r + 1]).collect();
        c.check(
            "gather",
            gathered.as_ref() == Some(&want),
            format!("{gathered:?}"),
        );
    } else {
        c.check(
            "gather (non-root gets None)",
            gathered.is_none(),
            format!("{gathered:?}"),
        );
    }
    let all = comm.all_gather(&mine);
    let want: Vec<Vec<u8>> = (0..size).map(|r| vec![r as u8; r + 1]).collect();
    c.check("all_gather", all == want, format!("{all:?}"));

    let mut b = if rank == root {
        b"from the last rank".to_vec()
    } else {
        vec![1, 2, 3]
    };
    comm.broadcast(&mut b, root);
    c.check("broadcast", b == b"from the last rank", format!("{b:?}"));
}

/// exchange: a ring of halos of different lengths each way, and an empty exchange.
fn check_exchanges(comm: &dyn Comm, c: &mut Checks) {
    let (rank, size) = (c.rank, c.size);
    // Ring halo exchange: send (rank, peer) to both neighbours, different lengths each way.
    let next = (rank + 1) % size;
    let prev = (rank + size - 1) % size;
    let mut sends = vec![(next, vec![rank as u8, next as u8, 1])];
    if prev != next {
        sends.push((prev, vec![rank as u8, prev as u8]));
    }
    let received = comm.exchange(sends);
    let mut want: Vec<(usize, Vec<u8>)> = vec![(prev, vec![prev as u8, rank as u8, 1])];
    if prev != next {
        want.push((next, vec![next as u8, rank as u8]));
    }
    want.sort();
    c.check(
        "exchange (ring)",
        received == want,
        format!("{received:?} != {want:?}"),
    );
    let received = comm.exchange(vec![]);
    c.check(
        "exchange (nothing)",
        received.is_empty(),
        format!("{received:?}"),
    );
}

/// any_failed: the lowest failing rank, and none.
fn check_failure_votes(comm: &dyn Comm, c: &mut Checks) {
    let (rank, size) = (c.rank, c.size);
    let failed = comm.any_failed(rank == size / 2);
    c.check(
        "any_failed",
        failed == Some(size / 2),
        format!("{failed:?}"),
    );
    c.check(
        "any_failed (none)",
        comm.any_failed(false).is_none(),
        String::new(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rank: usize, host: &str, node_rank: usize, node_size: usize) -> Placement {
        Placement {
            rank,
            host: host.into(),
            node_rank,
            node_size,
            threads: 1,
        }
    }

    #[test]
    fn node_ranks_must_follow_the_host_names() {
        let two_nodes = [
            at(0, "a", 0, 2),
            at(1, "a", 1, 2),
            at(2, "b", 0, 2),
            at(3, "b", 1, 2),
        ];
        assert_eq!(misplaced(&two_nodes), Vec::<String>::new());
        // One node's numbering on two hosts: rank 2 would take node 0's second GPU.
        let mut wrong = two_nodes.clone();
        wrong[2].node_rank = 2;
        wrong[2].node_size = 4;
        let found = misplaced(&wrong);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("rank 2 on b: node rank 2 of 4"),
            "{found:?}"
        );
        assert!(found[0].contains("[2, 3]"), "{found:?}");
    }

    #[test]
    fn passes_on_one_local_rank() {
        assert_eq!(run(&super::super::Local), Vec::<String>::new());
        let here = placements(&super::super::Local, 3);
        assert_eq!(here.len(), 1);
        assert_eq!(
            (here[0].node_rank, here[0].node_size, here[0].threads),
            (0, 1, 3)
        );
        assert_eq!(misplaced(&here), Vec::<String>::new());
    }
}
