//! Pass 1: every slice is read once, before any output exists, split among the ranks. A
//! slice that is missing, unreadable, not 2-D or not finite stops the run here (every
//! missing file listed at once); the others give their shape and how many patches they keep.
//! Counts are gathered to every rank, so each knows where every patch lands: a slice's first
//! patch is the prefix sum of the counts before it.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::kernel;
use super::source::{Problem, Split};
use crate::comm::Comm;
use crate::error::{Error, Result};

/// What pass 1 learnt about one slice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SliceFacts {
    pub height: u64,
    pub width: u64,
    /// Patch windows in the slice (before `--min-std`).
    pub windows: u64,
    /// Patches kept.
    pub kept: u64,
}

/// One split's slices and where each one's patches start.
#[derive(Clone, Debug, PartialEq)]
pub struct SplitLayout {
    pub facts: Vec<SliceFacts>,
    /// `first[i]`: index of slice i's first patch in the split; `first[n]` = all patches.
    pub first: Vec<u64>,
}

impl SplitLayout {
    fn new(facts: Vec<SliceFacts>) -> Self {
        let mut first = Vec::with_capacity(facts.len() + 1);
        let mut sum = 0u64;
        first.push(0);
        for f in &facts {
            sum += f.kept;
            first.push(sum);
        }
        SplitLayout { facts, first }
    }

    pub fn patches(&self) -> u64 {
        *self.first.last().expect("first has n + 1 entries")
    }

    /// The slice that holds patch `p` (which must exist).
    pub fn slice_of(&self, p: u64) -> usize {
        self.first[1..].partition_point(|&end| end <= p)
    }

    /// Slices smaller than a patch (no window fits).
    pub fn small_slices(&self) -> Vec<usize> {
        (0..self.facts.len())
            .filter(|&i| self.facts[i].windows == 0)
            .collect()
    }

    /// Patches dropped by `--min-std`.
    pub fn low_std(&self) -> u64 {
        self.facts.iter().map(|f| f.windows - f.kept).sum()
    }
}

/// Patch geometry and filter, as pass 1 and pass 2 use them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cutting {
    pub patch: u64,
    pub stride: u64,
    pub min_std: Option<f64>,
}

/// Reads slice `i` of `split` and counts its patches.
fn survey_slice(split: &Split, i: usize, cut: Cutting) -> std::result::Result<SliceFacts, Problem> {
    split.with_slice(i, |slice| {
        let (h, w) = (slice.nrows() as u64, slice.ncols() as u64);
        let windows = kernel::patch_count(h, w, cut.patch, cut.stride);
        let kept = match cut.min_std {
            None => windows,
            Some(_) => kernel::for_each_kept(slice, cut.patch, cut.stride, cut.min_std, |_, _| {}),
        };
        SliceFacts {
            height: h,
            width: w,
            windows,
            kept,
        }
    })
}

/// (split, slice) of every slice of every split, in order.
fn all_slices(splits: &[Split]) -> Vec<(usize, usize)> {
    splits
        .iter()
        .enumerate()
        .flat_map(|(s, split)| (0..split.len()).map(move |i| (s, i)))
        .collect()
}

/// Pass 1, collective: this rank's contiguous share of all slices read (in parallel), facts
/// and problems gathered to every rank.
///
/// # Errors
/// On every rank alike: missing slices (all listed), or the first unusable slice.
pub fn survey(splits: &[Split], cut: Cutting, comm: &dyn Comm) -> Result<Vec<SplitLayout>> {
    let all = all_slices(splits);
    let share = crate::grid::partition_contiguous(all.len(), comm.size())[comm.rank()].clone();
    let outcomes: Vec<std::result::Result<SliceFacts, Problem>> = all[share.clone()]
        .par_iter()
        .map(|&(s, i)| survey_slice(&splits[s], i, cut))
        .collect();
    let facts: Vec<SliceFacts> = outcomes
        .iter()
        .map(|o| o.clone().unwrap_or_default())
        .collect();
    let problems: Vec<(usize, Problem)> = outcomes
        .into_iter()
        .enumerate()
        .filter_map(|(k, o)| o.err().map(|p| (share.start + k, p)))
        .collect();
    let facts = gather_facts(comm, &facts);
    let problems: Vec<(usize, Problem)> = gather(comm, &problems);
    if !problems.is_empty() {
        return Err(refusal(splits, &all, &problems));
    }
    let mut layouts = Vec::with_capacity(splits.len());
    let mut at = 0;
    for split in splits {
        layouts.push(SplitLayout::new(facts[at..at + split.len()].to_vec()));
        at += split.len();
    }
    Ok(layouts)
}

/// Every rank's facts, concatenated in rank order, on every rank: 32 bytes a slice (four
/// little-endian u64), so that a million slices cross the ranks as 32 MB, not as text.
fn gather_facts(comm: &dyn Comm, mine: &[SliceFacts]) -> Vec<SliceFacts> {
    let bytes: Vec<u8> = mine
        .iter()
        .flat_map(|f| [f.height, f.width, f.windows, f.kept])
        .flat_map(u64::to_le_bytes)
        .collect();
    comm.all_gather(&bytes)
        .iter()
        .flat_map(|b| b.chunks_exact(32).map(facts_from_bytes))
        .collect()
}

fn facts_from_bytes(b: &[u8]) -> SliceFacts {
    let word = |k: usize| u64::from_le_bytes(b[8 * k..8 * k + 8].try_into().expect("8 bytes"));
    SliceFacts {
        height: word(0),
        width: word(1),
        windows: word(2),
        kept: word(3),
    }
}

/// Every rank's `mine` (problems: few), concatenated in rank order, on every rank.
fn gather<T: Serialize + for<'de> Deserialize<'de>>(comm: &dyn Comm, mine: &[T]) -> Vec<T> {
    let bytes = serde_json::to_vec(mine).expect("plain data serialises");
    comm.all_gather(&bytes)
        .iter()
        .flat_map(|b| serde_json::from_slice::<Vec<T>>(b).expect("gathered from this code"))
        .collect()
}

/// The first `most` items joined, and how many more there are.
fn listed(items: &[String], most: usize) -> String {
    let shown = items[..items.len().min(most)].join(", ");
    match items.len().saturating_sub(most) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// The one error for a failed survey: every missing file (with its manifest), else the first
/// unusable slice and how many more there are.
fn refusal(splits: &[Split], all: &[(usize, usize)], problems: &[(usize, Problem)]) -> Error {
    // `--input` runs name their flag, manifest runs `--manifest` (or `--split`).
    let flag = if splits.iter().all(|s| s.manifest.is_none()) {
        "input"
    } else {
        "manifest"
    };
    let missing: Vec<String> = problems
        .iter()
        .filter(|(_, p)| *p == Problem::Missing)
        .map(|&(k, _)| {
            let (s, i) = all[k];
            let name = splits[s].src_path(i);
            // Spaces at either end are part of the name (the message's one line would
            // otherwise lose them): quoted.
            if name.trim() != name {
                format!("{name:?} (row {})", i + 1)
            } else {
                format!("{name} (row {})", i + 1)
            }
        })
        .collect();
    if !missing.is_empty() {
        let roots: std::collections::BTreeSet<String> = splits
            .iter()
            .map(|s| s.root.display().to_string())
            .collect();
        return Error::parameter(
            flag,
            format!(
                "{} slice file(s) missing under the data root {}: {}",
                missing.len(),
                roots.into_iter().collect::<Vec<_>>().join(", "),
                listed(&missing, 10)
            ),
        );
    }
    let Problem::Unusable(first) = &problems[0].1 else {
        unreachable!("missing files were reported above")
    };
    let more = match problems.len() - 1 {
        0 => String::new(),
        n => format!(" (and {n} more slice(s) that cannot be used)"),
    };
    Error::parameter(flag, format!("{first}{more}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(kept: &[u64]) -> Vec<SliceFacts> {
        kept.iter()
            .map(|&k| SliceFacts {
                height: 1,
                width: 1,
                windows: k + 1,
                kept: k,
            })
            .collect()
    }

    #[test]
    fn facts_cross_ranks_as_they_are() {
        let mine = vec![
            SliceFacts {
                height: 362,
                width: u64::MAX,
                windows: 16,
                kept: 3,
            },
            SliceFacts::default(),
        ];
        assert_eq!(gather_facts(&crate::comm::Local, &mine), mine);
    }

    #[test]
    fn prefix_sums_locate_every_patch() {
        let l = SplitLayout::new(facts(&[3, 0, 2, 0, 1]));
        assert_eq!(l.first, vec![0, 3, 3, 5, 5, 6]);
        assert_eq!(l.patches(), 6);
        let owners: Vec<usize> = (0..6).map(|p| l.slice_of(p)).collect();
        assert_eq!(owners, vec![0, 0, 0, 2, 2, 4]);
        assert_eq!(l.low_std(), 5);
        assert!(l.small_slices().is_empty());
    }
}
