//! One process: every collective is an identity.

use super::{Comm, PendingSum, Ready, ReduceOp};

/// The communicator of a run without MPI: rank 0 of 1.
#[derive(Clone, Copy, Debug, Default)]
pub struct Local;

impl Comm for Local {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn barrier(&self) {}
    fn all_reduce_f64(&self, _values: &mut [f64], _op: ReduceOp) {}
    fn all_reduce_u64(&self, _values: &mut [u64], _op: ReduceOp) {}
    fn gather(&self, bytes: &[u8], root: usize) -> Option<Vec<Vec<u8>>> {
        assert_eq!(root, 0, "a local run has only rank 0");
        Some(vec![bytes.to_vec()])
    }
    fn broadcast(&self, _bytes: &mut Vec<u8>, root: usize) {
        assert_eq!(root, 0, "a local run has only rank 0");
    }
    fn start_sum(&self, values: &[u64]) -> Box<dyn PendingSum> {
        Box::new(Ready(Some(values.to_vec())))
    }
    fn exchange(&self, sends: Vec<(usize, Vec<u8>)>) -> Vec<(usize, Vec<u8>)> {
        sends
            .into_iter()
            .filter(|(peer, bytes)| *peer == 0 && !bytes.is_empty())
            .collect()
    }
}
