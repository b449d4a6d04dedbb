//! What the kernels' host checks (`ops/*/harness.rs`) share.

/// Asserts two equally long sequences of bit patterns are equal, naming the first difference.
pub fn assert_same_bits(what: &str, got: &[u64], want: &[u64], context: &dyn std::fmt::Debug) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ; {context:?}");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        let differing = (0..got.len()).filter(|&i| got[i] != want[i]).count();
        panic!(
            "{what}: {differing} of {} differ, first at {i}: host {:#x} vs CPU {:#x}; {context:?}",
            got.len(),
            got[i],
            want[i]
        );
    }
}
