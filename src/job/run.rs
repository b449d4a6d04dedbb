//! Running a job: the one path every command that writes an array takes (`tessera <command>`,
//! `tessera run job.toml`, the demo). It settles where the run report goes and refuses it up
//! front if it may not be written, runs the operation (whose outputs `exec::run` checks
//! against its inputs and the disk), and writes the report.

use std::path::{Path, PathBuf};

use crate::comm::Comm;
use crate::error::Result;
use crate::exec::report::write_report;
use crate::exec::{RunOptions, RunSummary};
use crate::io::{self, Address};
use crate::job::Job;

/// Default report path: beside the output (`out.zarr` -> `out.zarr.report.json`); an array
/// inside a store or file adds its path, so that several arrays of one container each keep
/// their report (`s.zarr/g/a` -> `s.zarr.g.a.report.json`, `f.h5:/data` ->
/// `f.h5.data.report.json`).
pub fn default_report(output: &Path) -> PathBuf {
    let text = output.to_string_lossy();
    let (container, inner) = match Address::parse(&text) {
        Ok(Address::Zarr { store, node }) => (store, node),
        Ok(Address::Hdf5 { file, dataset }) => (file, dataset),
        Ok(a) => (a.container().to_path_buf(), String::new()),
        Err(_) => (output.to_path_buf(), String::new()),
    };
    let mut name = container.into_os_string();
    for part in inner.split('/').filter(|p| !p.is_empty()) {
        name.push(".");
        name.push(part);
    }
    name.push(".report.json");
    PathBuf::from(name)
}

/// Fills in the report path (`--report`, else beside the output): `exec::run` checks it with
/// the outputs, before anything is written.
fn settle_report(run: &mut RunOptions, output: &Path) {
    run.report.get_or_insert_with(|| default_report(output));
}

/// Runs a job and writes its report.
///
/// # Errors
/// The job's failure.
pub fn run_job(mut job: Job, comm: &dyn Comm) -> Result<()> {
    use crate::ops::{convert, crop, pairs, patches, pyramid, quilt};
    let output = job.output();
    settle_report(job.run_options_mut(), &output);
    // What each job runs, and the report that names it: (command, parameters, summaries).
    let (command, params, summaries) = match &job {
        Job::Convert(j) => ("convert", parameters(j), convert::run(j, comm)?),
        Job::Crop(j) => ("crop", parameters(j), crop::run(j, comm)?),
        Job::Patches(j) => ("patches", parameters(j), patches::run(j, comm)?),
        Job::Unstitch(j) => {
            let mut op = quilt::UnstitchOp::plan(j)?;
            op.use_device(select(
                j.device,
                &j.gpu_memory_limit,
                comm,
                "quilt unstitch",
            )?);
            let s = run_op(&op, comm, &j.run)?;
            ("quilt unstitch", parameters(j), s)
        }
        Job::Weed(j) => {
            let s = run_op(&quilt::weed::WeedOp::plan(j, comm)?, comm, &j.run)?;
            ("quilt weed", parameters(j), s)
        }
        Job::Stitch(j) => {
            let mut op = quilt::StitchOp::plan(j)?;
            let device = select(j.device, &j.gpu_memory_limit, comm, "quilt stitch")?;
            crate::comm::agree(comm, op.use_device(device))?;
            let s = run_op(&op, comm, &j.run)?;
            ("quilt stitch", parameters(j), s)
        }
        Job::Pyramid(j) => {
            let mut op = pyramid::PyramidOp::plan(j)?;
            let device = crate::gpu::select(
                j.device,
                j.gpu_memory_limit.as_deref(),
                comm,
                "pyramid",
                op.has_gpu_kernel(),
            )?;
            crate::comm::agree(comm, op.use_device(device))?;
            let s = run_op(&op, comm, &j.run)?;
            ("pyramid", parameters(j), s)
        }
        Job::Pairs(j) => {
            let s = run_op(&pairs::PairsOp::plan(j)?, comm, &j.run)?;
            ("pairs", parameters(j), s)
        }
        Job::PairsExtract(j) => {
            let s = run_op(&pairs::PairsOp::plan_extract(j)?, comm, &j.run)?;
            ("pairs extract", parameters(j), s)
        }
        Job::Tokens(j) => {
            let s = run_op(&pairs::TokensOp::plan(j)?, comm, &j.run)?;
            ("tokens", parameters(j), s)
        }
        Job::Reconstruct(j) => {
            let s = run_op(&pyramid::reconstruct::ReconstructOp::plan(j)?, comm, &j.run)?;
            ("pyramid reconstruct", parameters(j), s)
        }
    };
    finish(command, job.run_options(), params, &summaries, comm)
}

/// `tessera hdr merge`: its own driver (per-bracket files do not go through `exec::run`), the
/// same report.
///
/// # Errors
/// The merge's failure.
pub fn run_hdr_merge(mut job: crate::ops::hdr::MergeJob, comm: &dyn Comm) -> Result<()> {
    settle_report(&mut job.run, &job.output.clone());
    let summaries = crate::ops::hdr::merge(&job, comm)?;
    finish("hdr merge", &job.run, parameters(&job), &summaries, comm)
}

/// This rank's device for an operation that has a GPU kernel (collective).
fn select(
    device: crate::gpu::DeviceChoice,
    limit: &Option<String>,
    comm: &dyn Comm,
    op: &str,
) -> Result<crate::gpu::Selected> {
    crate::gpu::select(device, limit.as_deref(), comm, op, true)
}

/// Runs one planned operation; its summary as the report wants it.
fn run_op<O: crate::exec::Operation>(
    op: &O,
    comm: &dyn Comm,
    run: &RunOptions,
) -> Result<Vec<RunSummary>> {
    Ok(vec![crate::exec::run(op, comm, run)?])
}

/// Job parameters as JSON for the report.
fn parameters<T: serde::Serialize>(job: &T) -> serde_json::Value {
    serde_json::to_value(job).unwrap_or_default()
}

/// Writes the report (rank 0) and prints what was written.
fn finish(
    command: &str,
    run: &RunOptions,
    parameters: serde_json::Value,
    summaries: &[RunSummary],
    comm: &dyn Comm,
) -> Result<()> {
    if run.dry_run || !comm.is_root() {
        return Ok(());
    }
    let Some(report) = &run.report else {
        return Ok(());
    };
    if !summaries.is_empty() && summaries.iter().all(|s| s.already_complete) && report.exists() {
        // A requeued job that had finished: its report stays the one of the run that did it
        // (one killed before writing it gets one saying that nothing ran).
        for s in summaries {
            println!(
                "{} is already complete (same parameters and inputs): nothing to do",
                s.output
            );
        }
        return Ok(());
    }
    // A present report was refused before the run unless --overwrite or the run resumed an
    // interrupted one (whose report this is).
    write_report(
        report,
        run.overwrite || run.resume,
        command,
        parameters,
        summaries,
    )?;
    for s in summaries {
        println!(
            "wrote {} ({:.1} MiB, {:.1} MiB on disk) in {:.2} s on {} rank{}: {:.0} MB/s",
            s.output,
            s.bytes_written as f64 / 1048576.0,
            s.bytes_on_disk as f64 / 1048576.0,
            s.seconds,
            s.ranks,
            if s.ranks == 1 { "" } else { "s" },
            s.throughput_mb_per_s
        );
    }
    println!("report: {}", report.display());
    Ok(())
}

/// `tessera info`.
///
/// # Errors
/// The address does not lead to a readable array.
pub fn info(address: &str, json: bool) -> Result<()> {
    use crate::error::Error;
    let addr = Address::parse(address)?;
    let reader = io::open(&addr)?;
    let meta = reader.meta();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(meta)
                .map_err(|e| Error::address(address, e.to_string()))?
        );
        return Ok(());
    }
    let dims = |v: &[u64]| crate::grid::join_with(v, " x ");
    println!("{addr} ({})", addr.kind());
    println!("  shape:  {}", dims(&meta.shape));
    println!("  dtype:  {}", meta.dtype);
    println!(
        "  chunks: {}",
        meta.chunks
            .as_deref()
            .map_or("none (contiguous)".into(), dims)
    );
    if let Some(shards) = &meta.shards {
        println!("  shards: {}", dims(shards));
    }
    println!(
        "  codecs: {}",
        if meta.codecs.is_empty() {
            "none".into()
        } else {
            meta.codecs.join(" -> ")
        }
    );
    if let Some(names) = &meta.dimension_names {
        println!("  dimension names: {}", names.join(", "));
    }
    let bytes = meta.shape.iter().product::<u64>() * meta.dtype.size() as u64;
    println!("  size:   {:.1} MiB uncompressed", bytes as f64 / 1048576.0);
    if meta.attributes.is_empty() {
        println!("  attributes: none");
    } else {
        println!("  attributes:");
        for (k, v) in &meta.attributes {
            let text = match v {
                serde_json::Value::Array(a) if a.len() > 8 => {
                    let head: Vec<String> = a.iter().take(3).map(|x| x.to_string()).collect();
                    format!("[{}, ... {} items]", head.join(", "), a.len())
                }
                other => other.to_string(),
            };
            println!("    {k}: {text}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_reports_name_the_array_inside_its_container() {
        let r = |s: &str| default_report(Path::new(s)).display().to_string();
        assert_eq!(r("d/o.zarr"), "d/o.zarr.report.json");
        assert_eq!(r("d/o.npy"), "d/o.npy.report.json");
        assert_eq!(r("s.zarr/g/a"), "s.zarr.g.a.report.json");
        assert_eq!(r("f.h5:/data"), "f.h5.data.report.json");
        assert_eq!(r("f.h5:/g/x"), "f.h5.g.x.report.json");
        assert_eq!(r("sky"), "sky.report.json");
    }
}
