//! MPI ranks through rsmpi. The universe lives as long as the process (MPI finalises when the
//! `Mpi` value drops, which `main` does last, after every HDF5 handle is closed).

use mpi::collective::SystemOperation;
use mpi::datatype::{Partition, PartitionMut};
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Count;

use super::{Comm, PendingSum, ReduceOp};

/// True when an MPI launcher (Open MPI, MPICH/Hydra, Slurm srun with PMIx) started us, or the
/// user forces MPI with `TESSERA_MPI=1`. `TESSERA_MPI=0` forces a local run.
pub(super) fn launched_by_mpi() -> bool {
    match std::env::var("TESSERA_MPI").as_deref() {
        Ok("1") => return true,
        Ok("0") => return false,
        _ => {}
    }
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMIX_RANK",
        "PMI_RANK",
        "PMI_SIZE",
        "MPI_LOCALNRANKS",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some())
}

/// The world communicator of an MPI job.
pub struct Mpi {
    world: SimpleCommunicator,
    // Dropped after `world`: finalises MPI.
    _universe: Universe,
}

// SAFETY: MPI is initialised with at least `Funneled`; tessera calls collectives only from the
// thread that owns the `Mpi` value (the main thread); rayon workers never touch it.
unsafe impl Send for Mpi {}
// SAFETY: as above.
unsafe impl Sync for Mpi {}

impl Mpi {
    pub fn init() -> Option<Mpi> {
        let universe = mpi::initialize()?;
        let world = universe.world();
        Some(Mpi {
            world,
            _universe: universe,
        })
    }
}

fn op(op: ReduceOp) -> SystemOperation {
    match op {
        ReduceOp::Sum => SystemOperation::sum(),
        ReduceOp::Min => SystemOperation::min(),
        ReduceOp::Max => SystemOperation::max(),
    }
}

/// A copy of `bytes` with one spare byte, so that even an empty message has a real address.
/// An empty Rust slice points at address 1, which Open MPI reads as `MPI_IN_PLACE`.
fn padded(bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(bytes.len() + 1);
    v.extend_from_slice(bytes);
    v.push(0);
    v
}

fn displacements(counts: &[Count]) -> Vec<Count> {
    counts
        .iter()
        .scan(0, |acc, &c| {
            let d = *acc;
            *acc += c;
            Some(d)
        })
        .collect()
}

impl Comm for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn size(&self) -> usize {
        self.world.size() as usize
    }
    fn node_local(&self) -> (usize, usize) {
        let node = self.world.split_shared(self.world.rank());
        (node.rank() as usize, node.size() as usize)
    }
    fn barrier(&self) {
        self.world.barrier();
    }
    fn all_reduce_f64(&self, values: &mut [f64], reduce: ReduceOp) {
        let send = values.to_vec();
        self.world.all_reduce_into(&send[..], values, op(reduce));
    }
    fn all_reduce_u64(&self, values: &mut [u64], reduce: ReduceOp) {
        let send = values.to_vec();
        self.world.all_reduce_into(&send[..], values, op(reduce));
    }
    fn gather(&self, bytes: &[u8], root: usize) -> Option<Vec<Vec<u8>>> {
        let root_process = self.world.process_at_rank(root as i32);
        let padded = padded(bytes);
        let bytes = &padded[..bytes.len()];
        let len = bytes.len() as Count;
        if self.rank() == root {
            let mut counts = vec![0 as Count; self.size()];
            root_process.gather_into_root(&len, &mut counts[..]);
            let displs = displacements(&counts);
            let total: Count = counts.iter().sum();
            // One spare byte: an empty buffer's dangling pointer could alias the send buffer.
            let mut buf = vec![0u8; total as usize + 1];
            {
                let mut partition = PartitionMut::new(&mut buf[..], &counts[..], &displs[..]);
                root_process.gather_varcount_into_root(bytes, &mut partition);
            }
            Some(
                counts
                    .iter()
                    .zip(&displs)
                    .map(|(&c, &d)| buf[d as usize..(d + c) as usize].to_vec())
                    .collect(),
            )
        } else {
            root_process.gather_into(&len);
            root_process.gather_varcount_into(bytes);
            None
        }
    }
    fn broadcast(&self, bytes: &mut Vec<u8>, root: usize) {
        let root_process = self.world.process_at_rank(root as i32);
        let mut len = bytes.len() as u64;
        root_process.broadcast_into(&mut len);
        // One spare byte so the buffer never has the dangling pointer of an empty Vec.
        bytes.resize(len as usize + 1, 0);
        root_process.broadcast_into(&mut bytes[..len as usize]);
        bytes.truncate(len as usize);
    }
    fn exchange(&self, sends: Vec<(usize, Vec<u8>)>) -> Vec<(usize, Vec<u8>)> {
        // Sizes first (all-to-all of one count per peer), then the payloads in one
        // all-to-all-varcount; peers that exchange nothing cost only a zero count.
        let size = self.size();
        let mut send_counts = vec![0 as Count; size];
        let mut payload_parts: Vec<Vec<u8>> = vec![Vec::new(); size];
        for (peer, bytes) in sends {
            assert!(peer < size, "exchange with rank {peer} of {size}");
            send_counts[peer] = bytes.len() as Count;
            payload_parts[peer] = bytes;
        }
        let mut recv_counts = vec![0 as Count; size];
        self.world
            .all_to_all_into(&send_counts[..], &mut recv_counts[..]);
        // Both buffers get a spare byte: an empty Vec's dangling pointer is address 1, which
        // Open MPI reads as MPI_IN_PLACE (MPI_ERR_ARG).
        let mut send_buf: Vec<u8> = payload_parts.concat();
        send_buf.push(0);
        let send_displs = displacements(&send_counts);
        let recv_displs = displacements(&recv_counts);
        let mut recv_buf = vec![0u8; recv_counts.iter().sum::<Count>() as usize + 1];
        {
            let send = Partition::new(&send_buf[..], &send_counts[..], &send_displs[..]);
            let mut recv = PartitionMut::new(&mut recv_buf[..], &recv_counts[..], &recv_displs[..]);
            self.world.all_to_all_varcount_into(&send, &mut recv);
        }
        (0..size)
            .filter(|&p| recv_counts[p] > 0)
            .map(|p| {
                let d = recv_displs[p] as usize;
                (p, recv_buf[d..d + recv_counts[p] as usize].to_vec())
            })
            .collect()
    }
    fn start_sum(&self, values: &[u64]) -> Box<dyn PendingSum> {
        Box::new(MpiSum::start(&self.world, values))
    }
    fn mpi_raw(&self) -> Option<mpi::ffi::MPI_Comm> {
        Some(self.world.as_raw())
    }
}

/// An `MPI_Iallreduce` in flight. Its buffers live on the heap, owned here, so they stay put
/// until the request completes; dropping it unfinished waits for it first.
struct MpiSum {
    send: Box<[u64]>,
    recv: Box<[u64]>,
    request: mpi::ffi::MPI_Request,
    done: bool,
}

impl MpiSum {
    fn start(world: &SimpleCommunicator, values: &[u64]) -> MpiSum {
        // One spare element: never the dangling pointer of an empty slice (see `padded`).
        let send: Box<[u64]> = values.iter().copied().chain([0]).collect();
        let mut recv: Box<[u64]> = vec![0; values.len() + 1].into_boxed_slice();
        // SAFETY: both buffers are heap allocations owned by the returned value, which does
        // not free them before the request completes (`test` or `Drop`); the datatype and
        // operation are rsmpi's handles for u64 and sum.
        let request = unsafe {
            let mut request = std::mem::MaybeUninit::uninit();
            mpi::ffi::MPI_Iallreduce(
                send.as_ptr().cast(),
                recv.as_mut_ptr().cast(),
                values.len() as Count,
                u64::equivalent_datatype().as_raw(),
                SystemOperation::sum().as_raw(),
                world.as_raw(),
                request.as_mut_ptr(),
            );
            request.assume_init()
        };
        MpiSum {
            send,
            recv,
            request,
            done: false,
        }
    }
}

impl PendingSum for MpiSum {
    fn test(&mut self) -> Option<Vec<u64>> {
        if self.done {
            return None;
        }
        let mut flag = 0;
        // SAFETY: `request` is the live request started in `start`.
        unsafe {
            mpi::ffi::MPI_Test(&mut self.request, &mut flag, mpi::ffi::RSMPI_STATUS_IGNORE);
        }
        if flag == 0 {
            return None;
        }
        self.done = true;
        let n = self.send.len() - 1;
        Some(self.recv[..n].to_vec())
    }
}

impl Drop for MpiSum {
    fn drop(&mut self) {
        if !self.done {
            // SAFETY: as in `test`; the buffers are freed only after this returns.
            unsafe {
                mpi::ffi::MPI_Wait(&mut self.request, mpi::ffi::RSMPI_STATUS_IGNORE);
            }
        }
    }
}
