//! `tessera pyramid reconstruct`: level 0 back from a Laplacian pyramid (its coarsest level
//! and its difference maps): `level l = diff_l + upsample(level l+1)`, from the top down, in
//! f64 per voxel and f32 between levels (as written), rounded to level 0's type at the end.
//!
//! One unit holding the whole volume, computed by one rank: meant for checking and for
//! volumes that fit in memory (a blocked version would follow the pyramid's own plan).

use std::sync::Mutex;

use ndarray::ArrayD;
use serde_json::{json, Value};

use super::kernel::{self, round_to};
use super::params::ReconstructJob;
use crate::comm::Comm;
use crate::error::{Error, Result};
use crate::exec::{Operation, UnitInfo};
use crate::grid::Region;
use crate::io::safety::Place;
use crate::io::{self, Address, ArrayWriter, Block, CreateSpec, Element};

pub struct ReconstructOp {
    targets: Vec<Address>,
    store: std::path::PathBuf,
    node: String,
    shapes: Vec<Vec<u64>>,
    factor: Vec<u64>,
    spec: CreateSpec,
    units: Vec<UnitInfo>,
    writer: Mutex<Option<Box<dyn ArrayWriter>>>,
    /// The job and its input, for `--resume` and the output checks.
    parameters: serde_json::Value,
    input: Address,
}

/// The level shapes and factor a Laplacian pyramid written by tessera records in its
/// `tessera` attribute, checked against each other.
fn laplacian_provenance(
    job: &ReconstructJob,
    store: &std::path::Path,
    node: &str,
) -> Result<(Vec<Vec<u64>>, Vec<u64>)> {
    let attrs = io::zarr::group_attributes(store, node).ok_or_else(|| {
        Error::address(
            job.input.clone(),
            "no Zarr group here (expected the pyramid's store)",
        )
    })?;
    let prov = attrs.get("tessera").ok_or_else(|| {
        Error::address(
            job.input.clone(),
            "no `tessera` attribute: not a pyramid written by tessera",
        )
    })?;
    if prov.get("method").and_then(Value::as_str) != Some("laplacian") {
        return Err(Error::address(
            job.input.clone(),
            "not a Laplacian pyramid (write one with --method laplacian)",
        ));
    }
    let corrupt = |what: &str| {
        Error::address(
            job.input.clone(),
            format!("corrupt `tessera` attribute: {what}"),
        )
    };
    let shapes: Vec<Vec<u64>> =
        serde_json::from_value(prov.get("shapes").cloned().unwrap_or_default())
            .map_err(|_| corrupt("shapes"))?;
    let factor: Vec<u64> = serde_json::from_value(prov.get("factor").cloned().unwrap_or_default())
        .map_err(|_| corrupt("factor"))?;
    if shapes.is_empty()
        || shapes.iter().any(|s| s.len() != factor.len())
        || factor.contains(&0)
        || shapes
            .windows(2)
            .any(|w| kernel::next_shape(&w[0], &factor) != w[1])
    {
        return Err(corrupt("level shapes and factor disagree"));
    }
    Ok((shapes, factor))
}

/// The reconstructed level 0's spec: the base level's type and chunks (or `--chunks`).
fn reconstruct_spec(
    job: &ReconstructJob,
    output: &Address,
    shape: &[u64],
    base: &io::ArrayMeta,
) -> Result<CreateSpec> {
    let spec = CreateSpec {
        flat_chunk_keys: false,
        shape: shape.to_vec(),
        dtype: base.dtype,
        chunks: job
            .chunks
            .clone()
            .or_else(|| base.chunks.clone())
            .unwrap_or_else(|| shape.to_vec()),
        shards: None,
        codec: job.codec.for_format(output)?,
        dimension_names: None,
        attributes: serde_json::Map::from_iter([(
            "reconstructed_from".to_string(),
            json!(job.input),
        )]),
    };
    spec.validated()
}

impl ReconstructOp {
    /// # Errors
    /// The input is not a Laplacian pyramid written by tessera, or its arrays disagree with
    /// its metadata.
    pub fn plan(job: &ReconstructJob) -> Result<ReconstructOp> {
        let input = Address::parse(&job.input)?;
        let Address::Zarr { store, node } = &input else {
            return Err(Error::address(
                job.input.clone(),
                "a pyramid is a Zarr group (name.zarr)",
            ));
        };
        let (shapes, factor) = laplacian_provenance(job, store, node)?;
        let levels = shapes.len();
        // Every array the reconstruction reads must be there with its recorded shape.
        let check = |name: &str, shape: &[u64]| -> Result<io::ArrayMeta> {
            let r = io::zarr::ZarrReader::open(store, &io::zarr::child_node(node, name))?;
            let meta = io::ArrayReader::meta(&r).clone();
            if meta.shape != shape {
                return Err(Error::mismatch(
                    format!("pyramid array {name}: shape"),
                    format!("{shape:?}"),
                    format!("{:?}", meta.shape),
                ));
            }
            Ok(meta)
        };
        let base = check("0", &shapes[0])?;
        check(&(levels - 1).to_string(), &shapes[levels - 1])?;
        for (l, shape) in shapes[..levels - 1].iter().enumerate() {
            check(&format!("diff_{l}"), shape)?;
        }
        let output = Address::parse(&job.output)?;
        let spec = reconstruct_spec(job, &output, &shapes[0], &base)?;
        let bytes: u64 = shapes[0].iter().product::<u64>() * base.dtype.size() as u64;
        Ok(ReconstructOp {
            targets: vec![output],
            store: store.clone(),
            node: node.clone(),
            units: vec![UnitInfo {
                label: format!("{levels} levels"),
                bytes_in: bytes,
                bytes_out: bytes,
            }],
            shapes,
            factor,
            spec,
            writer: Mutex::new(None),
            parameters: serde_json::to_value(job).unwrap_or_default(),
            input: input.clone(),
        })
    }

    fn read_f32(&self, name: &str) -> Result<ArrayD<f32>> {
        let r = io::zarr::ZarrReader::open(&self.store, &io::zarr::child_node(&self.node, name))?;
        let whole = Region::whole(&io::ArrayReader::meta(&r).shape);
        // The Laplacian's levels and difference maps are float32: taken as read, not copied.
        Ok(match io::ArrayReader::read_box(&r, &whole)? {
            Block::F32(values) => values,
            other => other.to_f64().mapv(|x| x as f32),
        })
    }

    /// Level 0 in the source's type, on the rank's threads (each value on its own).
    fn finish_as<T: Element>(level0: &ArrayD<f32>) -> Block {
        T::into_block(ndarray::Zip::from(level0).par_map_collect(|&x| round_to::<T>(f64::from(x))))
    }
}

impl Operation for ReconstructOp {
    type Output = (Region, Block);
    crate::exec::plan_fields!("pyramid reconstruct"; targets, units, parameters, spec);
    fn memory_per_unit(&self) -> u64 {
        self.units[0].bytes_out / self.spec.dtype.size() as u64 * 24
    }
    fn fingerprint(&self) -> serde_json::Value {
        json!({"shapes": self.shapes})
    }
    fn inputs(&self) -> Vec<Place> {
        vec![Place::Array(self.input.clone())]
    }
    fn open_output(&self, staging: &[Address], comm: &dyn Comm, resume: bool) -> Result<()> {
        *self.writer.lock().expect("writer") =
            Some(io::create(&staging[0], &self.spec, comm, resume)?);
        Ok(())
    }
    fn compute(&self, _unit: usize) -> Result<Self::Output> {
        let levels = self.shapes.len();
        let mut level = self.read_f32(&(levels - 1).to_string())?;
        for l in (0..levels - 1).rev() {
            let whole: Vec<std::ops::Range<u64>> = self.shapes[l].iter().map(|&n| 0..n).collect();
            let origin = vec![0; self.factor.len()];
            let coarse = kernel::Coarse {
                values: &level.view(),
                start: &origin,
                level_shape: &self.shapes[l + 1],
            };
            let difference = self.read_f32(&format!("diff_{l}"))?;
            level =
                kernel::laplacian_sum(&difference.view(), &origin, &coarse, &self.factor, &whole);
        }
        let block = crate::with_dtype!(self.spec.dtype, T => Self::finish_as::<T>(&level));
        Ok((Region::whole(&self.shapes[0]), block))
    }
    fn write(&self, part: Option<(usize, Self::Output)>) -> Result<()> {
        let writer = self.writer.lock().expect("writer");
        let writer = writer.as_ref().expect("opened");
        writer.write_box(part.as_ref().map(|(_, (r, b))| (r, b)))
    }
    fn finish(&self, _comm: &dyn Comm) -> Result<()> {
        let writer = self.writer.lock().expect("writer").take();
        writer.map_or(Ok(()), |w| w.close())
    }
}
