//! `tessera tokens`: a pairs group to pre-tokenized pairs with token overlaps ([`super::tokens`]).
//!
//! The pairs' displacements and turns are read and checked while planning (three numbers a
//! pair); units are runs of whole chunks of the pair axis, each reading its pairs' patches.
//! `coords` is the same for every pair and is written by the unit holding pair 0.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Mutex;

use ndarray::{Array2, ArrayD, Axis, IxDyn};
use rayon::prelude::*;
use serde_json::{json, Map, Value};

use super::params::TokensJob;
use super::tokens::{token_coords, token_grid, token_overlaps, tokenize_into, TokenOverlaps};
use super::{close_group, create_children, write_indexed, zarr_parts, Array, Parts};
use crate::comm::Comm;
use crate::error::{Error, Result};
use crate::exec::{Operation, UnitInfo};
use crate::grid::{self, Region};
use crate::io::safety::Place;
use crate::io::{self, Address, ArrayReader, ArrayWriter, Block, DType, Element};
use crate::with_dtype;

/// The arrays of a pairs group that tokens read.
struct PairsGroup {
    address: Address,
    patches1: Box<dyn ArrayReader>,
    patches2: Box<dyn ArrayReader>,
    /// Per pair: (dy, dx) and the quarter turns.
    geometry: Vec<([i64; 2], u8)>,
    /// M, C, U, V.
    shape: Vec<u64>,
    dtype: DType,
}

/// Opens `name` of the group, refusing a group without it.
fn child(group: &Address, name: &str) -> Result<Box<dyn ArrayReader>> {
    let (store, node) = zarr_parts(group).map_err(|_| {
        Error::parameter(
            "input",
            format!("{group} is not a Zarr group of pairs (tessera pairs writes one)"),
        )
    })?;
    let node = io::zarr::child_node(&node, name);
    if !io::zarr::is_array(&store.join(&node)) {
        return Err(Error::parameter(
            "input",
            format!("{group} has no `{name}` array: not a pairs group (tessera pairs writes patches1, patches2, deltas, rotations)"),
        ));
    }
    io::open(&Address::Zarr { store, node })
}

impl PairsGroup {
    /// Opens and checks the group: 2-D patches of one shape and type, one delta and turn per pair.
    fn open(input: &str) -> Result<PairsGroup> {
        let address = Address::parse(input)?;
        let patches1 = child(&address, "patches1")?;
        let patches2 = child(&address, "patches2")?;
        let deltas = child(&address, "deltas")?;
        let rotations = child(&address, "rotations")?;
        let (m1, m2) = (patches1.meta().clone(), patches2.meta().clone());
        if m1.shape.len() != 4 {
            return Err(Error::parameter(
                "input",
                format!(
                    "{address}/patches1 has shape {:?}: tokens are made of 2-D pairs (M, C, U, V)",
                    m1.shape
                ),
            ));
        }
        if m2.shape != m1.shape || m2.dtype != m1.dtype {
            return Err(Error::mismatch(
                format!("{address}/patches2"),
                format!("{:?} {} like patches1", m1.shape, m1.dtype),
                format!("{:?} {}", m2.shape, m2.dtype),
            ));
        }
        let m = m1.shape[0];
        if m == 0 {
            return Err(Error::parameter(
                "input",
                format!("{address} holds no pairs: there is nothing to tokenize"),
            ));
        }
        let geometry = read_geometry(
            &address,
            deltas.as_ref(),
            rotations.as_ref(),
            m,
            [m1.shape[2], m1.shape[3]],
        )?;
        Ok(PairsGroup {
            address,
            patches1,
            patches2,
            geometry,
            shape: m1.shape,
            dtype: m1.dtype,
        })
    }
}

/// Every pair's (dy, dx) and turns, checked: one per pair, whole displacements, 0..3 turns
/// (odd ones only for square patches).
fn read_geometry(
    group: &Address,
    deltas: &dyn ArrayReader,
    rotations: &dyn ArrayReader,
    m: u64,
    patch: [u64; 2],
) -> Result<Vec<([i64; 2], u8)>> {
    let (ds, rs) = (deltas.meta().shape.clone(), rotations.meta().shape.clone());
    if ds != [m, 2] || rs != [m] {
        return Err(Error::mismatch(
            format!("{group}: deltas and rotations"),
            format!("({m}, 2) and ({m},) for the {m} pairs of patches1"),
            format!("{ds:?} and {rs:?}"),
        ));
    }
    crate::exec::memory::check(&format!("the deltas of {group}"), m.saturating_mul(24))?;
    let d = deltas.read_box(&Region::whole(&ds))?.to_f64();
    let r = rotations.read_box(&Region::whole(&rs))?.to_f64();
    (0..m as usize)
        .map(|i| {
            let (dx, dy, k) = (d[[i, 0]], d[[i, 1]], r[[i]]);
            let whole = |v: f64| v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15;
            if !(whole(dx) && whole(dy) && (0.0..=3.0).contains(&k)) || k.fract() != 0.0 {
                return Err(Error::bad_file(
                    group.container(),
                    format!("pair {i}: delta ({dx}, {dy}) and rotation {k} are not whole pixels and 0..3 quarter turns"),
                ));
            }
            if k as u8 % 2 == 1 && patch[0] != patch[1] {
                return Err(Error::bad_file(
                    group.container(),
                    format!("pair {i}: {k} quarter turn(s) of {}x{} patches", patch[0], patch[1]),
                ));
            }
            Ok(([dy as i64, dx as i64], k as u8))
        })
        .collect()
}

/// `tessera tokens`.
pub struct TokensOp {
    parameters: Value,
    targets: Vec<Address>,
    group: PairsGroup,
    token: u64,
    stride: u64,
    coords: Vec<[u64; 2]>,
    arrays: Vec<Array>,
    runs: Vec<Range<u64>>,
    units: Vec<UnitInfo>,
    writers: Mutex<Vec<Box<dyn ArrayWriter>>>,
    staged: Mutex<Option<(PathBuf, String)>>,
}

const TOKEN_ARRAYS: [(&str, Option<DType>); 8] = [
    ("tokens1", None),
    ("tokens2", None),
    ("coords", Some(DType::I64)),
    ("overlap_index_1to2", Some(DType::I64)),
    ("overlap_fraction", Some(DType::F32)),
    ("overlap_index_2to1", Some(DType::I64)),
    ("overlap_mask1", Some(DType::U8)),
    ("overlap_mask2", Some(DType::U8)),
];

impl TokensOp {
    /// Checks the pairs group and the token geometry; creates nothing.
    ///
    /// # Errors
    /// A group that is not one of pairs, a token size or stride that does not fit.
    pub fn plan(job: &TokensJob) -> Result<TokensOp> {
        let group = PairsGroup::open(&job.input)?;
        let patch = [group.shape[2], group.shape[3]];
        let grid_ = token_grid(patch, job.token_size, job.token_stride)?;
        let coords = token_coords(&grid_);
        let output = super::output_address(
            &job.output,
            super::Content::Pixels {
                positions: false,
                include_n: false,
                overlaps: false,
            },
        )?;
        job.codec.for_format(&output)?;
        let (m, c) = (group.shape[0], group.shape[1]);
        let l = coords.len() as u64;
        let dim = grid::checked_product("token-size", &[c, job.token_size, job.token_size])?;
        let token_bytes = grid::checked_mul("token-size", l * dim, group.dtype.size() as u64)?;
        let per_chunk = super::pairs_per_chunk(job.pairs_per_chunk, token_bytes, None, m)?;
        let arrays = token_arrays(m, l, dim, group.dtype, per_chunk, job.codec)?;
        let pair_bytes = 2 * token_bytes + l * 22;
        let runs = super::plan_pair_runs(
            m,
            per_chunk,
            pair_bytes,
            None,
            &format!("the {m} pairs of --input"),
        )?;
        let patch_bytes = c * patch[0] * patch[1] * group.dtype.size() as u64;
        let units = super::pair_units(&runs, pair_bytes, patch_bytes);
        Ok(TokensOp {
            parameters: serde_json::to_value(job).unwrap_or_default(),
            targets: vec![output],
            token: job.token_size,
            stride: grid_.step[0],
            coords,
            group,
            arrays,
            runs,
            units,
            writers: Mutex::new(Vec::new()),
            staged: Mutex::new(None),
        })
    }

    fn rows_of(&self, name: &str) -> usize {
        TOKEN_ARRAYS
            .iter()
            .position(|(n, _)| *n == name)
            .expect("a token array")
    }

    /// Tokens of both patches of a run of pairs.
    fn tokenize<T: Element>(&self, run: &Range<u64>) -> Result<(Block, Block)> {
        let mut region = Region::whole(&self.group.shape);
        region.start[0] = run.start;
        region.shape[0] = run.end - run.start;
        let n = (run.end - run.start) as usize;
        let (l, dim) = (self.coords.len(), self.arrays[0].spec.shape[2] as usize);
        let mut out = Vec::new();
        for reader in [&self.group.patches1, &self.group.patches2] {
            let patches = reader
                .read_box(&region)?
                .into_array::<T>()
                .expect("reader dtype");
            let mut tokens = ArrayD::<T>::default(IxDyn(&[n, l, dim]));
            tokens
                .axis_iter_mut(Axis(0))
                .into_par_iter()
                .zip(patches.axis_iter(Axis(0)).into_par_iter())
                .for_each(|(t, p)| {
                    let mut t = t.into_dimensionality::<ndarray::Ix2>().expect("L x D");
                    tokenize_into(&p, &self.coords, self.token, &mut t);
                });
            out.push(T::into_block(tokens));
        }
        let second = out.pop().expect("two");
        Ok((out.pop().expect("two"), second))
    }

    /// The overlap arrays of a run of pairs.
    fn overlaps(&self, run: &Range<u64>) -> Parts {
        let patch = [self.group.shape[2], self.group.shape[3]];
        let found: Vec<TokenOverlaps> = self.group.geometry[run.start as usize..run.end as usize]
            .par_iter()
            .map(|&(delta, k)| token_overlaps(&self.coords, self.token, delta, k, patch))
            .collect();
        let (n, l) = (found.len(), self.coords.len());
        let table = |f: &dyn Fn(&TokenOverlaps) -> Vec<i64>| -> Array2<i64> {
            Array2::from_shape_vec((n, l), found.iter().flat_map(f).collect()).expect("n x L")
        };
        let one_to_two = table(&|o| o.index_1to2.clone());
        let two_to_one = table(&|o| o.index_2to1.clone());
        let fraction = Array2::from_shape_vec(
            (n, l),
            found.iter().flat_map(|o| o.fraction.clone()).collect(),
        )
        .expect("n x L");
        let region = Region {
            start: vec![run.start, 0],
            shape: vec![n as u64, l as u64],
        };
        let mask = |a: &Array2<i64>| Block::U8(a.mapv(|j| u8::from(j >= 0)).into_dyn());
        vec![
            (
                self.rows_of("overlap_mask1"),
                region.clone(),
                mask(&one_to_two),
            ),
            (
                self.rows_of("overlap_mask2"),
                region.clone(),
                mask(&two_to_one),
            ),
            (
                self.rows_of("overlap_index_1to2"),
                region.clone(),
                Block::I64(one_to_two.into_dyn()),
            ),
            (
                self.rows_of("overlap_fraction"),
                region.clone(),
                Block::F32(fraction.into_dyn()),
            ),
            (
                self.rows_of("overlap_index_2to1"),
                region,
                Block::I64(two_to_one.into_dyn()),
            ),
        ]
    }

    fn coords_part(&self) -> (usize, Region, Block) {
        let l = self.coords.len();
        let values: Vec<i64> = self
            .coords
            .iter()
            .flat_map(|c| [c[0] as i64, c[1] as i64])
            .collect();
        let block = Block::I64(ArrayD::from_shape_vec(IxDyn(&[l, 2]), values).expect("L x 2"));
        (self.rows_of("coords"), Region::whole(&[l as u64, 2]), block)
    }

    fn attributes(&self) -> Map<String, Value> {
        let mut attrs = Map::new();
        attrs.insert("token_size".into(), json!(self.token));
        attrs.insert("token_stride".into(), json!(self.stride));
        attrs.insert("num_tokens".into(), json!(self.coords.len()));
        attrs.insert("num_pairs".into(), json!(self.group.shape[0]));
        attrs.insert("num_channels".into(), json!(self.group.shape[1]));
        attrs.insert("patch_shape".into(), json!(&self.group.shape[2..]));
        attrs.insert("source".into(), json!(self.group.address.to_string()));
        attrs.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
        attrs
    }
}

/// Specs of the tokens group's arrays, in [`TOKEN_ARRAYS`] order.
fn token_arrays(
    m: u64,
    l: u64,
    dim: u64,
    dtype: DType,
    per_chunk: u64,
    codec: io::Codec,
) -> Result<Vec<Array>> {
    TOKEN_ARRAYS
        .iter()
        .map(|&(name, fixed)| {
            let (shape, chunks) = match name {
                "tokens1" | "tokens2" => (vec![m, l, dim], vec![per_chunk, l, dim]),
                "coords" => (vec![l, 2], vec![l, 2]),
                _ => (vec![m, l], vec![per_chunk, l]),
            };
            let spec =
                crate::ops::plain_spec(shape, fixed.unwrap_or(dtype), chunks, codec).validated()?;
            Ok(Array { name, spec })
        })
        .collect()
}

impl Operation for TokensOp {
    type Output = Parts;
    crate::exec::plan_fields!("tokens"; targets, units, parameters);
    fn planned_outputs(&self) -> Vec<crate::exec::disk::PlannedOutput> {
        self.arrays
            .iter()
            .map(|a| crate::exec::disk::PlannedOutput::child(&self.targets[0], a.name, &a.spec))
            .collect()
    }
    fn fingerprint(&self) -> Value {
        json!({"pairs": self.group.shape, "dtype": self.group.dtype.name(), "tokens": self.coords.len(), "units": self.units.len()})
    }
    fn inputs(&self) -> Vec<Place> {
        vec![Place::Array(self.group.address.clone())]
    }
    fn open_output(&self, staging: &[Address], comm: &dyn Comm, resume: bool) -> Result<()> {
        let (store, node) = zarr_parts(&staging[0])?;
        *self.staged.lock().expect("staged") = Some((store.clone(), node.clone()));
        *self.writers.lock().expect("writers") =
            create_children(&store, &node, &self.arrays, comm, resume)?;
        Ok(())
    }
    fn compute(&self, unit: usize) -> Result<Self::Output> {
        let run = &self.runs[unit];
        let (a, b) = with_dtype!(self.group.dtype, T => self.tokenize::<T>(run)?);
        let region = Region::slab(&self.arrays[0].spec.shape, 0, run.clone());
        let mut parts = vec![(0, region.clone(), a), (1, region, b)];
        parts.extend(self.overlaps(run));
        if run.start == 0 {
            parts.push(self.coords_part());
        }
        Ok(parts)
    }
    fn write(&self, part: Option<(usize, Self::Output)>) -> Result<()> {
        write_indexed(&self.writers, part)
    }
    fn finish(&self, comm: &dyn Comm) -> Result<()> {
        if self.runs.is_empty() && comm.is_root() {
            // No pairs, so no unit wrote the coordinates.
            let (w, region, block) = self.coords_part();
            self.writers.lock().expect("writers")[w].write_box(Some((&region, &block)))?;
        }
        close_group(&self.writers, &self.staged, comm, &self.attributes())
    }
}
