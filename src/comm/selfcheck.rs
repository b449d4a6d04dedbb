//! A self-checking exercise of every collective, run by `tessera debug comm-check` under
//! `mpirun -n 1, 2, 4` in the tests (MPI can start once per process, so MPI tests are
//! programs, not in-process test functions). Each check uses rank-dependent data whose
//! result every rank can predict.

use super::{Comm, ReduceOp};

/// Runs every check; returns the failures (empty when all pass).
pub fn run(comm: &dyn Comm) -> Vec<String> {
    let (rank, size) = (comm.rank(), comm.size());
    let mut failures = Vec::new();
    let mut check = |name: &str, ok: bool, detail: String| {
        if !ok {
            failures.push(format!("rank {rank}/{size}: {name}: {detail}"));
        }
    };
    comm.barrier();

    let mut v = [rank as f64 + 0.5, -(rank as f64)];
    comm.all_reduce_f64(&mut v, ReduceOp::Sum);
    let want = [
        (0..size).map(|r| r as f64 + 0.5).sum::<f64>(),
        -((0..size).sum::<usize>() as f64),
    ];
    check(
        "all_reduce f64 sum",
        v == want,
        format!("{v:?} != {want:?}"),
    );
    let mut v = [rank as f64, 10.0 - rank as f64];
    comm.all_reduce_f64(&mut v, ReduceOp::Min);
    check(
        "all_reduce f64 min",
        v == [0.0, 10.0 - (size - 1) as f64],
        format!("{v:?}"),
    );
    let mut v = [rank as u64 * 3, 7];
    comm.all_reduce_u64(&mut v, ReduceOp::Max);
    check(
        "all_reduce u64 max",
        v == [(size as u64 - 1) * 3, 7],
        format!("{v:?}"),
    );
    let mut v = [rank as u64 + 1];
    comm.all_reduce_u64(&mut v, ReduceOp::Sum);
    check(
        "all_reduce u64 sum",
        v[0] == (size * (size + 1) / 2) as u64,
        format!("{v:?}"),
    );

    // Variable-length gather: rank r sends r+1 bytes of value r.
    let mine = vec![rank as u8; rank + 1];
    let root = size - 1;
    let gathered = comm.gather(&mine, root);
    if rank == root {
        let want: Vec<Vec<u8>> = (0..size).map(|r| vec![r as u8; r + 1]).collect();
        check(
            "gather",
            gathered.as_ref() == Some(&want),
            format!("{gathered:?}"),
        );
    } else {
        check(
            "gather (non-root gets None)",
            gathered.is_none(),
            format!("{gathered:?}"),
        );
    }
    let all = comm.all_gather(&mine);
    let want: Vec<Vec<u8>> = (0..size).map(|r| vec![r as u8; r + 1]).collect();
    check("all_gather", all == want, format!("{all:?}"));

    let mut b = if rank == root {
        b"from the last rank".to_vec()
    } else {
        vec![1, 2, 3]
    };
    comm.broadcast(&mut b, root);
    check("broadcast", b == b"from the last rank", format!("{b:?}"));

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
    check(
        "exchange (ring)",
        received == want,
        format!("{received:?} != {want:?}"),
    );
    let received = comm.exchange(vec![]);
    check(
        "exchange (nothing)",
        received.is_empty(),
        format!("{received:?}"),
    );

    let failed = comm.any_failed(rank == size / 2);
    check(
        "any_failed",
        failed == Some(size / 2),
        format!("{failed:?}"),
    );
    check(
        "any_failed (none)",
        comm.any_failed(false).is_none(),
        String::new(),
    );
    comm.barrier();
    failures
}

#[cfg(test)]
mod tests {
    #[test]
    fn passes_on_one_local_rank() {
        assert_eq!(super::run(&super::super::Local), Vec::<String>::new());
    }
}
