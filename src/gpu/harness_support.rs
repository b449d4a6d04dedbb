//! What the kernels' host checks (`ops/*/harness.rs`) share.

/// An element's bit pattern (its bytes, zero-extended to 64 bits), for comparisons that must
/// tell NaN payloads and signed zeros apart.
pub fn bits<T: bytemuck::Pod>(x: T) -> u64 {
    let mut b = [0u8; 8];
    let bytes = bytemuck::bytes_of(&x);
    b[..bytes.len()].copy_from_slice(bytes);
    u64::from_ne_bytes(b)
}

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

/// A struct's layout as the C side reports it (`tessera_host_*_layout`): `size_of::<T>()`, then
/// `offset_of!(T, field)` for each field named, in order.
macro_rules! layout {
    ($t:ty; $($field:ident),+ $(,)?) => {
        vec![std::mem::size_of::<$t>() $(, std::mem::offset_of!($t, $field))+]
    };
}
pub(crate) use layout;

/// Asserts the layout the C side reports through `report` is `rust` (from [`layout!`]).
///
/// # Safety
/// `report` writes at most `rust.len()` values.
pub unsafe fn assert_c_layout(what: &str, report: unsafe extern "C" fn(*mut i64), rust: &[usize]) {
    let mut c = vec![0i64; rust.len()];
    // SAFETY: the caller's promise: `report` writes at most as many values as `c` holds.
    unsafe { report(c.as_mut_ptr()) };
    let c: Vec<usize> = c.iter().map(|&v| v as usize).collect();
    assert_eq!(c, rust, "{what}: the C layout (size, then field offsets)");
}
