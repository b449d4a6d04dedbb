//! Stratified selection of pairs from their metadata (`tessera pairs select`): the pairs are
//! binned on a `bins x bins` grid of (mean, sigma) of their first patch, and up to `per_bin`
//! pairs are drawn from every cell, so that rare kinds of patch (dark, flat, busy) are as well
//! represented as common ones. Bins are equal-width over the observed range (`histogram`) or
//! hold equal counts (`quantiles`). Each cell draws from its own seeded stream; pairs whose
//! statistics are not finite belong to no cell. The result is ascending pair indices.

use serde::{Deserialize, Serialize};

use super::sampler::Stream;

/// How bins are cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Strata {
    /// Equal-width bins between the smallest and largest value.
    #[default]
    Histogram,
    /// Bins holding equal numbers of pairs (edges at quantiles).
    Quantiles,
}

/// The bin of every value (`None` for values that are not finite), `bins` bins.
pub fn bin_values(values: &[f64], bins: usize, by: Strata) -> Vec<Option<usize>> {
    let mut finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() || bins == 0 {
        return vec![None; values.len()];
    }
    match by {
        Strata::Histogram => {
            let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let width = (hi - lo) / bins as f64;
            values
                .iter()
                .map(|&v| {
                    v.is_finite().then(|| {
                        if width > 0.0 {
                            (((v - lo) / width) as usize).min(bins - 1)
                        } else {
                            0
                        }
                    })
                })
                .collect()
        }
        Strata::Quantiles => {
            finite.sort_by(f64::total_cmp);
            let n = finite.len();
            let inner: Vec<f64> = (1..bins).map(|k| finite[k * n / bins]).collect();
            values
                .iter()
                .map(|&v| v.is_finite().then(|| inner.partition_point(|&e| e <= v)))
                .collect()
        }
    }
}

/// Up to `per_bin` pair indices from every (mean, sigma) cell, ascending.
pub fn stratified(
    mean: &[f64],
    sigma: &[f64],
    by: Strata,
    bins: usize,
    per_bin: usize,
    seed: u64,
) -> Vec<u64> {
    let (mb, sb) = (bin_values(mean, bins, by), bin_values(sigma, bins, by));
    let mut cells: Vec<Vec<u64>> = vec![Vec::new(); bins * bins];
    for (i, (m, s)) in mb.iter().zip(&sb).enumerate() {
        if let (Some(m), Some(s)) = (m, s) {
            cells[m * bins + s].push(i as u64);
        }
    }
    let mut chosen: Vec<u64> = cells
        .iter_mut()
        .enumerate()
        .flat_map(|(c, members)| draw(members, per_bin, Stream::new(seed, c as u64)))
        .collect();
    chosen.sort_unstable();
    chosen
}

/// `k` members drawn without replacement (a partial Fisher-Yates shuffle).
fn draw(members: &mut [u64], k: usize, mut stream: Stream) -> Vec<u64> {
    let k = k.min(members.len());
    for i in 0..k {
        let j = i + stream.below((members.len() - i) as u64) as usize;
        members.swap(i, j);
    }
    members[..k].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cell_gives_up_to_per_bin_pairs_from_itself() {
        let mut s = Stream::new(3, 3);
        let n = 5000;
        // Skewed statistics: most pairs are dim and flat, few are bright or busy.
        let mean: Vec<f64> = (0..n)
            .map(|_| (s.below(1000) as f64 / 1000.0).powi(4))
            .collect();
        let sigma: Vec<f64> = (0..n)
            .map(|_| (s.below(1000) as f64 / 1000.0).powi(3))
            .collect();
        for by in [Strata::Histogram, Strata::Quantiles] {
            let chosen = stratified(&mean, &sigma, by, 5, 7, 1);
            let (mb, sb) = (bin_values(&mean, 5, by), bin_values(&sigma, 5, by));
            let mut per_cell = std::collections::HashMap::new();
            let mut population = std::collections::HashMap::new();
            for i in 0..n {
                *population.entry((mb[i], sb[i])).or_insert(0) += 1;
            }
            for &i in &chosen {
                *per_cell
                    .entry((mb[i as usize], sb[i as usize]))
                    .or_insert(0) += 1;
            }
            for (cell, &count) in &population {
                let got = per_cell.get(cell).copied().unwrap_or(0);
                assert_eq!(got, count.min(7), "{by:?} cell {cell:?}");
            }
            assert!(
                chosen.windows(2).all(|w| w[0] < w[1]),
                "ascending, no repeats"
            );
            assert_eq!(chosen, stratified(&mean, &sigma, by, 5, 7, 1), "seeded");
            assert_ne!(
                chosen,
                stratified(&mean, &sigma, by, 5, 7, 2),
                "seed matters"
            );
        }
    }

    #[test]
    fn bins_are_equal_width_or_equal_count() {
        let values: Vec<f64> = (0..100).map(|i| (i as f64).powi(2)).collect();
        let h = bin_values(&values, 4, Strata::Histogram);
        assert_eq!(h[0], Some(0));
        assert_eq!(h[50], Some(1)); // 2500 / 9801 * 4 = 1.02
        assert_eq!(h[99], Some(3));
        let q = bin_values(&values, 4, Strata::Quantiles);
        for b in 0..4 {
            assert_eq!(q.iter().filter(|&&x| x == Some(b)).count(), 25);
        }
        let with_nan = bin_values(&[1.0, f64::NAN, 2.0], 2, Strata::Histogram);
        assert_eq!(with_nan, vec![Some(0), None, Some(1)]);
        assert_eq!(
            bin_values(&[5.0, 5.0], 3, Strata::Histogram),
            vec![Some(0), Some(0)]
        );
    }
}
