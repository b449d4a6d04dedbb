//! Buffers kept between units for reuse. A fresh large buffer is a fresh mapping that the
//! kernel faults in and zeroes page by page (a third of some operations' time, measured), so
//! operations hand finished buffers back here and take them for the next unit. At most two
//! are kept: one unit computes while the previous one is written.

use std::sync::Mutex;

/// A small pool of reusable buffers.
#[derive(Debug)]
pub struct Spares<T>(Mutex<Vec<T>>);

impl<T> Default for Spares<T> {
    fn default() -> Self {
        Spares(Mutex::new(Vec::new()))
    }
}

impl<T> Spares<T> {
    /// A kept buffer for which `fits` holds, if any.
    pub fn take(&self, fits: impl Fn(&T) -> bool) -> Option<T> {
        let mut kept = self.0.lock().expect("spares lock");
        let at = kept.iter().position(fits);
        at.map(|i| kept.swap_remove(i))
    }

    /// Keeps `buffer` for a later unit (dropped when two are kept already).
    pub fn keep(&self, buffer: T) {
        let mut kept = self.0.lock().expect("spares lock");
        if kept.len() < 2 {
            kept.push(buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_two_and_hands_back_what_fits() {
        let s = Spares::default();
        s.keep(1);
        s.keep(2);
        s.keep(3);
        assert_eq!(s.take(|&x| x == 3), None, "a third is dropped");
        assert_eq!(s.take(|&x| x == 2), Some(2));
        assert_eq!(s.take(|_| true), Some(1));
        assert_eq!(s.take(|_| true), None);
    }
}
