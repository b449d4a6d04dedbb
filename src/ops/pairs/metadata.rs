//! The per-pair metadata table of `tessera pairs --metadata-only`: an (M, 12) float64 array
//! for 2-D pairs, (M, 15) for 3-D, one row per pair in qlty's column order (see [`columns`]),
//! with the names in its `columns` attribute and the sampling in its `pairs` attribute. Read
//! back whole by `pairs select` and `pairs extract` (one row is 96 or 120 bytes, checked
//! against the memory there is first).

use serde_json::{Map, Value};

use super::sampler::Pair;
use crate::error::{Error, Result};
use crate::grid::Region;
use crate::io::{self, Address};

/// Column names of the table for `ndim` spatial axes.
pub fn columns(ndim: usize) -> Vec<&'static str> {
    if ndim == 3 {
        vec![
            "image_idx",
            "patch1_z",
            "patch1_y",
            "patch1_x",
            "patch2_z",
            "patch2_y",
            "patch2_x",
            "dx",
            "dy",
            "dz",
            "rotation",
            "mean1",
            "sigma1",
            "mean2",
            "sigma2",
        ]
    } else {
        vec![
            "image_idx",
            "patch1_y",
            "patch1_x",
            "patch2_y",
            "patch2_x",
            "dx",
            "dy",
            "rotation",
            "mean1",
            "sigma1",
            "mean2",
            "sigma2",
        ]
    }
}

/// One row: where the pair sits, how it is turned, and both patches' (mean, sigma).
pub fn row(pair: &Pair, stats: [(f64, f64); 2]) -> Vec<f64> {
    let mut r = vec![pair.image as f64];
    r.extend(pair.first.iter().map(|&v| v as f64));
    r.extend(pair.second.iter().map(|&v| v as f64));
    r.extend(pair.delta().iter().rev().map(|&v| v as f64));
    r.push(f64::from(pair.rotation));
    r.extend([stats[0].0, stats[0].1, stats[1].0, stats[1].1]);
    r
}

/// A metadata table read back.
pub struct Table {
    pub address: Address,
    pub ndim: usize,
    pub rows: usize,
    values: Vec<f64>,
    pub attributes: Map<String, Value>,
}

impl Table {
    /// Reads a whole table, checking its shape (and its `columns` attribute when it has one).
    ///
    /// # Errors
    /// A missing or unreadable array, a shape that is no metadata table, too little memory.
    pub fn read(address: &Address) -> Result<Table> {
        let reader = io::open(address)?;
        let meta = reader.meta().clone();
        let ndim = match meta.shape.as_slice() {
            [_, 12] => 2,
            [_, 15] => 3,
            other => {
                return Err(Error::address(
                    address.to_string(),
                    format!("is no pairs metadata table: shape {other:?}, expected (M, 12) for 2-D pairs or (M, 15) for 3-D (tessera pairs --metadata-only)"),
                ))
            }
        };
        if let Some(names) = meta.attributes.get("columns") {
            if names != &serde_json::json!(columns(ndim)) {
                return Err(Error::address(
                    address.to_string(),
                    format!("its columns {names} are not those of tessera pairs --metadata-only"),
                ));
            }
        }
        crate::exec::memory::check(
            &format!("the metadata table {address}"),
            meta.shape[0].saturating_mul(meta.shape[1] * 8),
        )?;
        let values = reader
            .read_box(&Region::whole(&meta.shape))?
            .to_f64()
            .into_raw_vec_and_offset()
            .0;
        Ok(Table {
            address: address.clone(),
            ndim,
            rows: meta.shape[0] as usize,
            values,
            attributes: meta.attributes,
        })
    }

    fn width(&self) -> usize {
        columns(self.ndim).len()
    }

    /// Every value of column `name`.
    pub fn column(&self, name: &str) -> Vec<f64> {
        let c = columns(self.ndim)
            .iter()
            .position(|&n| n == name)
            .expect("a known column");
        self.values
            .iter()
            .skip(c)
            .step_by(self.width())
            .copied()
            .collect()
    }

    /// The window the table was sampled with (its `pairs` attribute), if it says.
    pub fn window(&self) -> Option<Vec<u64>> {
        serde_json::from_value(self.attributes.get("pairs")?.get("window")?.clone()).ok()
    }

    /// Row `i` as a pair, checked: whole numbers, a displacement that agrees with the corners.
    ///
    /// # Errors
    /// [`Error::Parameter`] naming `--metadata` and the row.
    pub fn pair(&self, i: usize) -> Result<Pair> {
        let r = &self.values[i * self.width()..(i + 1) * self.width()];
        let nd = self.ndim;
        let bad = |what: String| {
            Error::parameter("metadata", format!("{}: row {i}: {what}", self.address))
        };
        let whole = |v: f64, name: &str| -> Result<u64> {
            if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(53) {
                Ok(v as u64)
            } else {
                Err(bad(format!(
                    "{name} {v} is not a non-negative whole number"
                )))
            }
        };
        let image = whole(r[0], "image_idx")?;
        let first = (0..nd)
            .map(|a| whole(r[1 + a], "patch1 corner"))
            .collect::<Result<Vec<_>>>()?;
        let second = (0..nd)
            .map(|a| whole(r[1 + nd + a], "patch2 corner"))
            .collect::<Result<Vec<_>>>()?;
        let rotation = whole(r[1 + 3 * nd], "rotation")?;
        let pair = Pair {
            image,
            first,
            second,
            rotation: u8::try_from(rotation).unwrap_or(u8::MAX),
        };
        let stored: Vec<f64> = r[1 + 2 * nd..1 + 3 * nd].to_vec();
        let implied: Vec<f64> = pair.delta().iter().rev().map(|&d| d as f64).collect();
        if stored != implied {
            return Err(bad(format!(
                "displacement {stored:?} disagrees with the corners (implies {implied:?})"
            )));
        }
        Ok(pair)
    }
}

/// Reads a selection (a 1-D array of pair indices, any integer type) and checks every index
/// against the table's `rows`.
///
/// # Errors
/// [`Error::Parameter`] naming `--select`.
pub fn read_selection(address: &Address, rows: usize) -> Result<Vec<usize>> {
    let reader = io::open(address)?;
    let shape = reader.meta().shape.clone();
    if shape.len() != 1 {
        return Err(Error::parameter(
            "select",
            format!("{address} has shape {shape:?}; a selection is a 1-D array of pair indices"),
        ));
    }
    let values = reader.read_box(&Region::whole(&shape))?.to_f64();
    values
        .iter()
        .map(|&v| {
            if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && (v as usize) < rows {
                Ok(v as usize)
            } else {
                Err(Error::parameter(
                    "select",
                    format!("{address}: {v} is not a pair index of the metadata's {rows} rows"),
                ))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_holds_x_first_displacements_in_qlty_order() {
        let pair = Pair {
            image: 3,
            first: vec![10, 20],
            second: vec![14, 17],
            rotation: 2,
        };
        let r = row(&pair, [(1.5, 0.5), (2.5, 0.25)]);
        assert_eq!(
            r,
            vec![3.0, 10.0, 20.0, 14.0, 17.0, -3.0, 4.0, 2.0, 1.5, 0.5, 2.5, 0.25]
        );
        assert_eq!(r.len(), columns(2).len());
        let p3 = Pair {
            image: 0,
            first: vec![1, 2, 3],
            second: vec![2, 4, 6],
            rotation: 0,
        };
        let r = row(&p3, [(0.0, 0.0); 2]);
        assert_eq!(&r[7..10], &[3.0, 2.0, 1.0]);
        assert_eq!(r.len(), columns(3).len());
    }
}
