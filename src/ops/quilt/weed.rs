//! `tessera quilt weed`: drop training pairs whose labels carry no annotation.
//!
//! A pair (input patch, label patch) is dropped when every label value inside the border band's
//! interior (border mask 1), in every label channel, equals `--missing-label`. The keep flags
//! are computed while planning (each rank reads its share of the labels; flags are gathered),
//! so the output size is known before anything is created; units are then runs of output rows.

use crate::io::safety::Place;
use std::ops::Range;
use std::sync::Mutex;

use ndarray::{ArrayD, Axis, IxDyn};
use serde_json::{json, Map};

use super::kernel;
use super::params::WeedJob;
use crate::comm::Comm;
use crate::error::{Error, Result};
use crate::exec::{Operation, UnitInfo};
use crate::grid::windows::check_border;
use crate::grid::{self, Region};
use crate::io::{
    self, Address, ArrayMeta, ArrayReader, ArrayWriter, Block, CreateSpec, DType, Element,
};
use crate::with_dtype;

/// True when a label patch (C', *window) has an annotated value where `mask` is 1.
pub fn has_labels(labels: &ArrayD<f64>, mask: &ArrayD<u8>, missing: f64) -> bool {
    labels.axis_iter(Axis(0)).any(|channel| {
        ndarray::Zip::from(&channel)
            .and(mask)
            .fold(false, |found, &v, &m| found || (m == 1 && v != missing))
    })
}

pub struct WeedOp {
    targets: [Address; 3],
    input: Box<dyn ArrayReader>,
    labels: Box<dyn ArrayReader>,
    /// Original indices of the kept pairs, ascending.
    kept: Vec<u64>,
    removed_mask: Vec<u8>,
    input_spec: CreateSpec,
    labels_spec: CreateSpec,
    mask_spec: CreateSpec,
    runs: Vec<Range<u64>>,
    units: Vec<UnitInfo>,
    writers: Mutex<Vec<Box<dyn ArrayWriter>>>,
    /// The job and what it reads, for `--resume` and the output checks.
    parameters: serde_json::Value,
    inputs: Vec<Place>,
}

fn spec_like(shape: Vec<u64>, dtype: DType, codec: io::Codec) -> CreateSpec {
    let per_chunk =
        super::patches_per_chunk(shape[1..].iter().product::<u64>() * dtype.size() as u64);
    let mut chunks = vec![per_chunk.min(shape[0].max(1))];
    chunks.extend(&shape[1..]);
    crate::ops::plain_spec(shape, dtype, chunks, codec)
}

/// Refuses a missing label that no label value can equal: nothing would ever be weeded, and
/// the run would look like a success.
fn check_missing_label(missing: f64, labels: DType) -> Result<()> {
    if !missing.is_finite() {
        return Err(Error::parameter("missing-label", "must be a finite number"));
    }
    if labels.holds_exactly(missing) {
        return Ok(());
    }
    Err(Error::parameter(
        "missing-label",
        format!(
            "{missing} cannot be represented in the labels' dtype {labels}, so no pair could ever be weeded; give the value your {labels} labels use for \"not annotated\" (e.g. --missing-label 0)"
        ),
    ))
}

impl WeedOp {
    /// Reads every label patch (split among ranks) and decides which pairs stay.
    ///
    /// # Errors
    /// Mismatched shapes, bad border, unreadable inputs.
    pub fn plan(job: &WeedJob, comm: &dyn Comm) -> Result<WeedOp> {
        let input_addr = Address::parse(&job.input)?;
        let labels_addr = Address::parse(&job.labels)?;
        let input = io::open(&input_addr)?;
        let labels = io::open(&labels_addr)?;
        let (im, lm) = (input.meta().clone(), labels.meta().clone());
        check_label_shape(&labels_addr, &im.shape, &lm.shape)?;
        check_missing_label(job.missing_label, lm.dtype)?;
        let targets = [
            Address::parse(&job.output)?,
            Address::parse(&job.labels_output)?,
            Address::parse(&job.mask)?,
        ];
        // Refused before staging; each output's own format resolves `auto` in io::create.
        for target in &targets {
            job.codec.for_format(target)?;
        }
        let window = im.shape[2..].to_vec();
        let border = weed_border(job, &im, &lm, &window)?;
        let mask = kernel::border_mask(&window, &border);
        let m = im.shape[0];
        let all = label_flags(labels.as_ref(), &mask, job.missing_label, comm)?;
        let kept: Vec<u64> = all
            .iter()
            .enumerate()
            .filter(|(_, &k)| k == 1)
            .map(|(i, _)| i as u64)
            .collect();
        let removed_mask: Vec<u8> = all.iter().map(|&k| 1 - k).collect();
        if comm.is_root() {
            log_kept(kept.len(), m, job.missing_label);
        }
        let kept_n = kept.len() as u64;
        let (input_spec, labels_spec, mask_spec) = weed_specs(job, &im, &lm, &border, kept_n);
        let (runs, units) = weed_units(&input_spec, &im, &lm, kept_n);
        Ok(WeedOp {
            targets,
            input,
            labels,
            kept,
            removed_mask,
            input_spec,
            labels_spec,
            mask_spec,
            runs,
            units,
            writers: Mutex::new(Vec::new()),
            parameters: serde_json::to_value(job).unwrap_or_default(),
            inputs: vec![Place::Array(input_addr), Place::Array(labels_addr)],
        })
    }

    /// Gathers the kept patches `rows` (output order) of one array, reading contiguous runs.
    fn gather<T: Element>(&self, reader: &dyn ArrayReader, rows: &Range<u64>) -> Result<Block> {
        let shape = &reader.meta().shape;
        let mut out_shape: Vec<usize> = shape.iter().map(|&n| n as usize).collect();
        out_shape[0] = (rows.end - rows.start) as usize;
        let mut out = ArrayD::<T>::default(IxDyn(&out_shape));
        let kept = &self.kept[rows.start as usize..rows.end as usize];
        let mut i = 0;
        while i < kept.len() {
            let mut j = i + 1;
            while j < kept.len() && kept[j] == kept[j - 1] + 1 {
                j += 1;
            }
            let mut region = Region::whole(shape);
            region.start[0] = kept[i];
            region.shape[0] = (j - i) as u64;
            let block = reader
                .read_box(&region)?
                .into_array::<T>()
                .expect("reader dtype");
            out.slice_axis_mut(Axis(0), ndarray::Slice::from(i..j))
                .assign(&block);
            i = j;
        }
        Ok(T::into_block(out))
    }
}

// Planning steps of `WeedOp::plan`, in the order it takes them.

/// Refuses label patches whose shape is not (M, C', *window) of the input patches'.
fn check_label_shape(labels_addr: &Address, input: &[u64], labels: &[u64]) -> Result<()> {
    if input.len() < 4
        || labels.len() != input.len()
        || input[0] != labels[0]
        || input[2..] != labels[2..]
    {
        return Err(Error::mismatch(
            format!("label patches {labels_addr}: shape"),
            format!("(M, C', *window) matching the input patches {input:?}"),
            format!("{labels:?}"),
        ));
    }
    Ok(())
}

/// The border left out of the label test: `--border`, else the `quilt` attribute's (labels'
/// first, then the input's), checked against the window.
fn weed_border(job: &WeedJob, im: &ArrayMeta, lm: &ArrayMeta, window: &[u64]) -> Result<Vec<u64>> {
    let border_from_attrs = lm
        .attributes
        .get("quilt")
        .or_else(|| im.attributes.get("quilt"))
        .and_then(|q| q.get("border"))
        .and_then(|b| serde_json::from_value::<Vec<u64>>(b.clone()).ok())
        .unwrap_or_default();
    let border = if job.border.is_empty() {
        border_from_attrs
    } else {
        job.border.clone()
    };
    check_border(&border, window).map_err(|e| Error::parameter(e.parameter, e.message))
}

/// Whether each pair has a label inside the mask (1) or not (0), for every pair: each rank
/// tests its contiguous share in batches of about 16 MiB, then the flags are all-gathered.
fn label_flags(
    labels: &dyn ArrayReader,
    mask: &ArrayD<u8>,
    missing_label: f64,
    comm: &dyn Comm,
) -> Result<Vec<u8>> {
    let lm = labels.meta();
    let m = lm.shape[0];
    let share = grid::partition_contiguous(m as usize, comm.size())[comm.rank()].clone();
    let mut flags = Vec::with_capacity(share.len());
    let patch_bytes = lm.shape[1..].iter().product::<u64>() * lm.dtype.size() as u64;
    let batch = ((16u64 << 20) / patch_bytes.max(1)).max(1);
    let mut region = Region::whole(&lm.shape);
    let mut at = share.start as u64;
    let mine = (|| -> Result<()> {
        while at < share.end as u64 {
            let end = (at + batch).min(share.end as u64);
            region.start[0] = at;
            region.shape[0] = end - at;
            let block = labels.read_box(&region)?;
            let values = block.to_f64();
            for p in values.axis_iter(Axis(0)) {
                flags.push(u8::from(has_labels(&p.to_owned(), mask, missing_label)));
            }
            at = end;
        }
        Ok(())
    })();
    crate::comm::agree(comm, mine)?;
    Ok(comm.all_gather(&flags).concat())
}

/// Rank 0's line on what was kept, and a warning when nothing was.
fn log_kept(kept: usize, of: u64, missing_label: f64) {
    tracing::info!(
        "weed: keeping {} of {} pairs ({} have no labels outside the border)",
        kept,
        of,
        of as usize - kept
    );
    if kept == 0 {
        tracing::warn!("weed: every pair was removed: is --missing-label {missing_label} right?");
    }
}

/// The kept input and label patches' specs (with the weed's attributes) and the mask's.
fn weed_specs(
    job: &WeedJob,
    im: &ArrayMeta,
    lm: &ArrayMeta,
    border: &[u64],
    kept_n: u64,
) -> (CreateSpec, CreateSpec, CreateSpec) {
    let m = im.shape[0];
    let mut input_shape = im.shape.clone();
    input_shape[0] = kept_n;
    let mut labels_shape = lm.shape.clone();
    labels_shape[0] = kept_n;
    let mut input_spec = spec_like(input_shape, im.dtype, job.codec);
    let mut labels_spec = spec_like(labels_shape, lm.dtype, job.codec);
    let mask_spec = spec_like(vec![m], DType::U8, job.codec);
    let mut attributes = Map::new();
    if let Some(q) = im.attributes.get("quilt") {
        attributes.insert("quilt_source".into(), q.clone());
    }
    attributes.insert("weed_missing_label".into(), json!(job.missing_label));
    attributes.insert("weed_border".into(), json!(border));
    attributes.insert("weed_kept".into(), json!(kept_n));
    attributes.insert("weed_of".into(), json!(m));
    input_spec.attributes = attributes.clone();
    labels_spec.attributes = attributes;
    (input_spec, labels_spec, mask_spec)
}

/// Runs of kept pairs, whole chunks near the target unit size, with what each moves.
fn weed_units(
    input_spec: &CreateSpec,
    im: &ArrayMeta,
    lm: &ArrayMeta,
    kept_n: u64,
) -> (Vec<Range<u64>>, Vec<UnitInfo>) {
    let per_chunk = input_spec.chunks[0];
    let in_patch = im.shape[1..].iter().product::<u64>() * im.dtype.size() as u64;
    let patch_bytes = lm.shape[1..].iter().product::<u64>() * lm.dtype.size() as u64;
    let runs = crate::exec::unit_runs(kept_n, per_chunk, in_patch);
    let units = runs
        .iter()
        .map(|r| UnitInfo {
            label: format!("kept pairs {}..{}", r.start, r.end),
            bytes_in: (r.end - r.start) * (in_patch + patch_bytes),
            bytes_out: (r.end - r.start) * (in_patch + patch_bytes),
        })
        .collect();
    (runs, units)
}

impl Operation for WeedOp {
    type Output = Vec<(Region, Block)>;
    crate::exec::plan_fields!("quilt weed"; targets, units, parameters);
    fn planned_outputs(&self) -> Vec<crate::exec::disk::PlannedOutput> {
        [&self.input_spec, &self.labels_spec, &self.mask_spec]
            .into_iter()
            .zip(&self.targets)
            .map(|(spec, t)| crate::exec::disk::PlannedOutput::array(t, spec))
            .collect()
    }
    fn memory_per_unit(&self) -> u64 {
        self.units
            .iter()
            .map(|u| u.bytes_out * 2)
            .max()
            .unwrap_or(0)
    }
    fn fingerprint(&self) -> serde_json::Value {
        json!({"kept": self.kept.len(), "input": format!("{:?}", self.input_spec), "labels": format!("{:?}", self.labels_spec)})
    }
    fn inputs(&self) -> Vec<Place> {
        self.inputs.clone()
    }
    fn open_output(&self, staging: &[Address], comm: &dyn Comm, resume: bool) -> Result<()> {
        let writers = vec![
            io::create(&staging[0], &self.input_spec, comm, resume)?,
            io::create(&staging[1], &self.labels_spec, comm, resume)?,
            io::create(&staging[2], &self.mask_spec, comm, resume)?,
        ];
        *self.writers.lock().expect("writers") = writers;
        Ok(())
    }
    fn compute(&self, unit: usize) -> Result<Self::Output> {
        let rows = &self.runs[unit];
        let input =
            with_dtype!(self.input_spec.dtype, T => self.gather::<T>(self.input.as_ref(), rows)?);
        let labels =
            with_dtype!(self.labels_spec.dtype, T => self.gather::<T>(self.labels.as_ref(), rows)?);
        let region = |shape: &[u64]| {
            let mut r = Region::whole(shape);
            r.start[0] = rows.start;
            r.shape[0] = rows.end - rows.start;
            r
        };
        Ok(vec![
            (region(&self.input_spec.shape), input),
            (region(&self.labels_spec.shape), labels),
        ])
    }
    fn write(&self, part: Option<(usize, Self::Output)>) -> Result<()> {
        // The mask (third writer) is written whole in `finish`.
        let writers = self.writers.lock().expect("writers");
        io::write_parts(&writers[..2], part.as_ref().map(|(_, p)| p.as_slice()))
    }
    fn finish(&self, comm: &dyn Comm) -> Result<()> {
        let writers = std::mem::take(&mut *self.writers.lock().expect("writers"));
        // The mask is small: rank 0 writes it whole; the others take part with nothing.
        let mask = Block::U8(
            ArrayD::from_shape_vec(IxDyn(&[self.removed_mask.len()]), self.removed_mask.clone())
                .expect("mask length"),
        );
        let whole = Region::whole(&self.mask_spec.shape);
        writers[2].write_box(comm.is_root().then_some((&whole, &mask)))?;
        for (w, spec) in
            writers
                .into_iter()
                .zip([&self.input_spec, &self.labels_spec, &self.mask_spec])
        {
            w.set_attributes(&spec.attributes)?;
            w.close()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_inside_the_border_decide() {
        let mask = kernel::border_mask(&[4, 4], &[1, 1]);
        let mut l = ArrayD::from_elem(IxDyn(&[1, 4, 4]), -1.0);
        assert!(!has_labels(&l, &mask, -1.0));
        l[[0, 0, 0]] = 3.0; // in the band: ignored
        assert!(!has_labels(&l, &mask, -1.0));
        l[[0, 1, 2]] = 0.0; // inside: a real label (0 is a class)
        assert!(has_labels(&l, &mask, -1.0));
    }

    #[test]
    fn a_missing_label_the_labels_cannot_hold_is_refused() {
        for (missing, dtype) in [
            (-1.0, DType::U8),
            (-1.0, DType::U16),
            (0.5, DType::I32),
            (300.0, DType::U8),
            (0.1, DType::F32),
        ] {
            let e = check_missing_label(missing, dtype).unwrap_err().to_string();
            assert!(
                e.starts_with("--missing-label:")
                    && e.contains(&missing.to_string())
                    && e.contains(dtype.name()),
                "{e}"
            );
        }
        for (missing, dtype) in [(-1.0, DType::I16), (0.0, DType::U8), (-1.0, DType::F32)] {
            check_missing_label(missing, dtype).unwrap();
        }
        assert!(check_missing_label(f64::NAN, DType::F64).is_err());
    }
}
