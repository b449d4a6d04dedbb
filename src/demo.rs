//! `tessera demo`: makes a small synthetic image stack, converts it, and tells the user how to
//! look at the result. The data are two overlapping bright spheres in a smooth ramp, with a
//! known pixel formula, so that anyone can check what came back.

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};

use crate::comm::Comm;
use crate::error::{IoContext, Result};
use crate::exec::RunOptions;
use crate::io::{images, Block, Codec};
use crate::job::{ConvertJob, Job};

/// Slices, rows and columns of the demo stack.
pub const DEMO_SHAPE: [usize; 3] = [64, 256, 256];

/// The demo volume's value at (z, y, x): a ramp plus two spheres, in u16.
pub fn demo_voxel(z: usize, y: usize, x: usize) -> u16 {
    let ramp = (z * 40 + y * 10 + x * 5) as f64;
    let sphere = |cz: f64, cy: f64, cx: f64, r: f64| {
        let d2 = (z as f64 - cz).powi(2) + (y as f64 - cy).powi(2) + (x as f64 - cx).powi(2);
        if d2 <= r * r {
            20000.0
        } else {
            0.0
        }
    };
    (ramp + sphere(32.0, 100.0, 100.0, 24.0) + sphere(40.0, 150.0, 160.0, 30.0)) as u16
}

/// Writes the demo stack as `dir/slices/demo_NNNN.tif`.
///
/// # Errors
/// Filesystem errors.
pub fn write_stack(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).at(dir)?;
    let [nz, ny, nx] = DEMO_SHAPE;
    for z in 0..nz {
        let slice = ArrayD::from_shape_fn(IxDyn(&[ny, nx]), |i| demo_voxel(z, i[0], i[1]));
        images::write_tiff(&dir.join(format!("demo_{z:04}.tif")), &Block::U16(slice))?;
    }
    Ok(())
}

/// Writes the demo volume as an (N=1, C=1, Z, Y, X) uint16 `.npy`, the layout quilting takes.
///
/// # Errors
/// Filesystem errors.
pub fn write_nczyx(path: &Path) -> Result<()> {
    let [nz, ny, nx] = DEMO_SHAPE;
    let volume =
        ArrayD::from_shape_fn(IxDyn(&[1, 1, nz, ny, nx]), |i| demo_voxel(i[2], i[3], i[4]));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).at(parent)?;
    }
    ndarray_npy::write_npy(path, &volume)
        .map_err(|e| crate::error::Error::bad_file(path, e.to_string()))
}

/// Runs the demo.
///
/// # Errors
/// Any failure of the steps, naming the file.
pub fn run(dir: &Path, comm: &dyn Comm) -> Result<()> {
    let output = demo_convert(dir, comm)?;
    demo_quilt(dir, comm)?;
    let pyramid = demo_pyramid(dir, &output, comm)?;
    if comm.is_root() {
        print_next_steps(dir, &output, &pyramid)?;
    }
    Ok(())
}

/// A synthetic stack of TIFF slices converted to Zarr; returns the store.
fn demo_convert(dir: &Path, comm: &dyn Comm) -> Result<PathBuf> {
    let slices = dir.join("slices");
    crate::comm::on_root(comm, || write_stack(&slices))?;
    if comm.is_root() {
        println!(
            "demo: wrote {} TIFF slices of {}x{} uint16 to {}",
            DEMO_SHAPE[0],
            DEMO_SHAPE[1],
            DEMO_SHAPE[2],
            slices.display()
        );
    }
    let output = dir.join("demo.zarr");
    let job = ConvertJob {
        chunks: Some(vec![16, 128, 128]),
        codec: Codec::Zstd,
        ..ConvertJob::tifs_to_zarr(slices, crate::job::DEFAULT_PATTERN, output.clone())
    };
    crate::job::run_job(Job::Convert(job), comm)?;

    Ok(output)
}

/// Quilting: the volume cut into overlapping windows and stitched back, with the largest
/// difference printed.
fn demo_quilt(dir: &Path, comm: &dyn Comm) -> Result<()> {
    let volume = dir.join("demo-nczyx.npy");
    crate::comm::on_root(comm, || write_nczyx(&volume))?;
    let patches = dir.join("patches.zarr");
    let stitched = dir.join("stitched.npy");
    let run = RunOptions {
        overwrite: true,
        ..RunOptions::default()
    };
    let geometry = crate::job::GeometryArgs {
        window: vec![32, 64, 64],
        step: vec![16, 32, 32],
        border: vec![4, 8, 8],
        ..Default::default()
    };
    crate::job::run_job(
        Job::Unstitch(crate::job::UnstitchJob {
            input: volume.to_string_lossy().into_owned(),
            output: patches.to_string_lossy().into_owned(),
            geometry,
            positions: None,
            patches_per_chunk: None,
            codec: Codec::Zstd,
            device: Default::default(),
            gpu_memory_limit: None,
            run: run.clone(),
        }),
        comm,
    )?;
    crate::job::run_job(
        Job::Stitch(crate::job::StitchJob {
            input: patches.to_string_lossy().into_owned(),
            output: stitched.to_string_lossy().into_owned(),
            weights: None,
            variance: None,
            std: None,
            shape: None,
            geometry: Default::default(),
            chunks: None,
            codec: Codec::Zstd,
            memory_limit: "512M".into(),
            device: Default::default(),
            gpu_memory_limit: None,
            run,
        }),
        comm,
    )?;
    if comm.is_root() {
        let original: ArrayD<u16> = ndarray_npy::read_npy(&volume)
            .map_err(|e| crate::error::Error::bad_file(&volume, e.to_string()))?;
        let back: ArrayD<f32> = ndarray_npy::read_npy(&stitched)
            .map_err(|e| crate::error::Error::bad_file(&stitched, e.to_string()))?;
        let worst = original
            .iter()
            .zip(back.iter())
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs())
            .fold(0.0, f64::max);
        println!(
            "quilt: unstitched {} into {} and stitched it back: largest difference {worst}",
            volume.display(),
            patches.display()
        );
    }
    Ok(())
}

/// A multiscale OME-Zarr pyramid of the converted volume; returns the store.
fn demo_pyramid(dir: &Path, output: &Path, comm: &dyn Comm) -> Result<PathBuf> {
    let pyramid = dir.join("pyramid.zarr");
    crate::job::run_job(
        Job::Pyramid(crate::job::PyramidJob {
            input: output.to_string_lossy().into_owned(),
            output: pyramid.to_string_lossy().into_owned(),
            axes: None,
            factor: None,
            levels: None,
            method: crate::ops::pyramid::kernel::Method::Mean,
            chunks: Some(vec![32, 64, 64]),
            shards: None,
            codec: Codec::Zstd,
            layout: crate::job::PyramidLayout::Ome,
            voxel_size: None,
            unit: None,
            device: Default::default(),
            gpu_memory_limit: None,
            run: RunOptions {
                overwrite: true,
                ..RunOptions::default()
            },
        }),
        comm,
    )?;
    Ok(pyramid)
}

/// What the demo made, and what to try next (rank 0).
fn print_next_steps(dir: &Path, output: &Path, pyramid: &Path) -> Result<()> {
    let out = output.display();
    println!();
    crate::job::info(&output.to_string_lossy(), false)?;
    println!();
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "tessera".into());
    println!("Look at it:");
    println!("  {exe} info {out}");
    println!("  python3 -c 'import zarr; a = zarr.open_array(\"{out}\", mode=\"r\")");
    println!("  print(a.shape, a.dtype, a.attrs[\"axis_order\"])");
    println!("  print(\"centre of sphere 1:\", a[32, 100, 100], \"background:\", a[0, 0, 0])'");
    println!(
        "  python3 -c 'import zarr; g = zarr.open_group(\"{}\", mode=\"r\"); print([g[k].shape for k in sorted(g.array_keys())])'",
        pyramid.display()
    );
    println!("Next: {exe} run configs/convert-demo.toml (the same from a TOML job file),");
    println!(
        "      mpirun -n 2 --bind-to none {exe} convert --input {} --output out.zarr",
        dir.join("slices").display()
    );
    Ok(())
}
