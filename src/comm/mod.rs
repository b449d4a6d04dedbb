//! The few collectives tessera needs, behind one trait, so every operation runs the same way
//! on one process and on many MPI ranks. Operations never call MPI directly.
//!
//! All collectives but [`Comm::start_sum`] are blocking, and all must be called by every rank
//! in the same order.

mod local;
#[cfg(feature = "mpi")]
mod mpi;
pub mod selfcheck;

use crate::error::{Error, Result};

pub use local::Local;

#[cfg(feature = "mpi")]
pub use mpi::Mpi;

/// Fails every rank when any failed: the failing rank keeps its own error, the others get
/// [`Error::PeerFailed`]. Collective: wrap every step that only some ranks do (rank 0 writing
/// a file) in it, so that no rank is left waiting in a collective that the others skipped.
///
/// # Errors
/// This rank's error, or [`Error::PeerFailed`] naming the lowest failing rank.
pub fn agree<T>(comm: &dyn Comm, result: Result<T>) -> Result<T> {
    match comm.any_failed(result.is_err()) {
        None => result,
        Some(rank) => match result {
            Err(e) => Err(e),
            Ok(_) => Err(Error::PeerFailed { rank }),
        },
    }
}

/// Runs `step` on rank 0 only and [`agree`]s on its outcome: every rank returns rank 0's
/// error as [`Error::PeerFailed`] (rank 0 its own), so none goes on alone. Collective.
///
/// # Errors
/// Rank 0's error, as [`agree`] hands it out.
pub fn on_root(comm: &dyn Comm, step: impl FnOnce() -> Result<()>) -> Result<()> {
    let result = if comm.is_root() { step() } else { Ok(()) };
    agree(comm, result)
}

/// The name of the host this rank runs on (reports, the output lock).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// Reductions for `all_reduce`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Min,
    Max,
}

/// One rank's view of the job's processes.
pub trait Comm: Send + Sync {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    fn barrier(&self);
    /// Element-wise reduction across ranks, in place; every rank gets the result.
    /// Sums over f64 are not reordered by tessera, but MPI may sum in any order: use
    /// `gather` where bit-exact sums across rank counts matter.
    fn all_reduce_f64(&self, values: &mut [f64], op: ReduceOp);
    fn all_reduce_u64(&self, values: &mut [u64], op: ReduceOp);
    /// Collects every rank's bytes on `root`, in rank order; `None` on other ranks.
    fn gather(&self, bytes: &[u8], root: usize) -> Option<Vec<Vec<u8>>>;
    /// Replaces `bytes` on every rank with `root`'s.
    fn broadcast(&self, bytes: &mut Vec<u8>, root: usize);
    /// Halo exchange: sends each `(peer, bytes)` and returns what each peer sent to this rank,
    /// as `(peer, bytes)` sorted by peer. Empty messages are not delivered.
    fn exchange(&self, sends: Vec<(usize, Vec<u8>)>) -> Vec<(usize, Vec<u8>)>;
    /// Starts a non-blocking element-wise sum across ranks (`MPI_Iallreduce`): the runner's
    /// way to hear of other ranks' progress and failures without stopping its own work. Every
    /// rank must start the same sequence of sums, and may have only one in flight; it is
    /// complete when every rank has started it.
    fn start_sum(&self, values: &[u64]) -> Box<dyn PendingSum>;
    /// The raw MPI communicator, for libraries that do their own MPI-IO (parallel HDF5).
    #[cfg(feature = "mpi")]
    fn mpi_raw(&self) -> Option<::mpi::ffi::MPI_Comm> {
        None
    }

    /// This rank's index among the ranks on its node, and how many there are (MPI's
    /// shared-memory split: `MPI_Comm_split_type(SHARED)`, ordered by world rank). Collective.
    /// Used to give each rank of a node its own GPU.
    fn node_local(&self) -> (usize, usize) {
        (0, 1)
    }

    fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// Everyone's bytes on every rank (gather then broadcast).
    fn all_gather(&self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let gathered = self.gather(bytes, 0);
        let mut packed = gathered.map(|parts| pack(&parts)).unwrap_or_default();
        self.broadcast(&mut packed, 0);
        unpack(&packed)
    }

    /// True on every rank when `failed` is true on any; returns the lowest failing rank.
    fn any_failed(&self, failed: bool) -> Option<usize> {
        let mut v = [if failed { self.rank() as u64 } else { u64::MAX }];
        self.all_reduce_u64(&mut v, ReduceOp::Min);
        (v[0] != u64::MAX).then_some(v[0] as usize)
    }
}

/// A sum started by [`Comm::start_sum`].
pub trait PendingSum {
    /// The result once every rank has contributed; `None` while some have not (returns at
    /// once).
    fn test(&mut self) -> Option<Vec<u64>>;
}

/// A sum that needed nobody else (one rank).
pub struct Ready(pub Option<Vec<u64>>);

impl PendingSum for Ready {
    fn test(&mut self) -> Option<Vec<u64>> {
        self.0.take()
    }
}

/// Length-prefixed concatenation, the wire format of `all_gather`.
fn pack(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(&(p.len() as u64).to_le_bytes());
        out.extend_from_slice(p);
    }
    out
}

fn unpack(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut parts = Vec::new();
    while bytes.len() >= 8 {
        let (len, rest) = bytes.split_at(8);
        let len = u64::from_le_bytes(len.try_into().expect("8 bytes")) as usize;
        parts.push(rest[..len].to_vec());
        bytes = &rest[len..];
    }
    parts
}

/// Sets up the communicator for this process: MPI when built with it and launched by an MPI
/// launcher (or `TESSERA_MPI=1`), else a single local rank.
pub fn init() -> Box<dyn Comm> {
    #[cfg(feature = "mpi")]
    if mpi::launched_by_mpi() {
        if let Some(comm) = Mpi::init() {
            return Box::new(comm);
        }
    }
    Box::new(Local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips() {
        let parts = vec![vec![1, 2], vec![], vec![3]];
        assert_eq!(unpack(&pack(&parts)), parts);
    }

    #[test]
    fn local_collectives_are_identities() {
        let c = Local;
        let mut v = [1.5, 2.0];
        c.all_reduce_f64(&mut v, ReduceOp::Max);
        assert_eq!(v, [1.5, 2.0]);
        assert_eq!(c.gather(&[7], 0), Some(vec![vec![7]]));
        assert_eq!(c.all_gather(&[7, 8]), vec![vec![7, 8]]);
        assert_eq!(c.exchange(vec![(0, vec![9])]), vec![(0, vec![9])]);
        assert_eq!(c.any_failed(false), None);
        assert_eq!(c.any_failed(true), Some(0));
    }
}
