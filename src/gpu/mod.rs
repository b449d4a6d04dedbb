//! GPUs: which device a rank uses (`--device`), the CUDA kernels' sources, and (feature
//! `cuda`) the context, compiled-module cache, streams, pinned staging buffers and device
//! phase timings every GPU kernel goes through. Operations never call cudarc except through
//! this module.
//!
//! One binary serves machines with and without CUDA: the driver (`libcuda.so.1`) and NVRTC
//! (`libnvrtc.so.13`) are loaded at run time, so `--device auto` falls back to the CPU where
//! either is missing and `--device cuda` says why it cannot run. Kernels are CUDA C (`.cu`
//! beside each operation's CPU kernel), compiled once per process by NVRTC for the device's
//! compute capability, with `--fmad=false` so that their arithmetic is the CPU kernel's bit
//! for bit.

pub mod cache;
pub mod kernels;

#[cfg(feature = "cuda")]
pub mod cuda;

#[cfg(test)]
pub mod harness_support;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::comm::Comm;
use crate::error::{Error, Result};

/// `--device`: where a rank runs its kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// A GPU when the driver, a device and a kernel for the operation are there, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// A GPU: the given ordinal (of those `CUDA_VISIBLE_DEVICES` shows), or by node-local rank.
    Cuda(Option<usize>),
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(None)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n.parse().map(|n| DeviceChoice::Cuda(Some(n))).map_err(|_| {
                    format!("`{s}`: expected cuda:N with N a device number (0, 1, ...)")
                }),
                None => Err(format!("`{s}`: expected auto, cpu, cuda or cuda:N")),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => write!(f, "auto"),
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(None) => write!(f, "cuda"),
            DeviceChoice::Cuda(Some(n)) => write!(f, "cuda:{n}"),
        }
    }
}

impl Serialize for DeviceChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What the run report says about one rank's device: which one, and where its time went.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DeviceReport {
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// The GPU's name and UUID (`GPU-...`, as nvidia-smi prints it); empty on the CPU.
    pub name: String,
    pub uuid: String,
    /// Compute capability, e.g. `9.0`.
    pub compute_capability: String,
    /// Device memory this rank allowed itself, bytes.
    pub memory_limit: u64,
    /// Why the CPU was used under `--device auto` (no driver, no device, no kernel).
    pub reason: String,
    /// Host-to-device copies, kernels, device-to-host copies: seconds (CUDA events) and bytes.
    pub h2d_seconds: f64,
    pub h2d_bytes: u64,
    pub kernel_seconds: f64,
    pub d2h_seconds: f64,
    pub d2h_bytes: u64,
    /// NVRTC compilation of this rank's kernels (once per process), seconds.
    pub compile_seconds: f64,
    /// Start-up: opening the device (driver, context, streams), seconds.
    #[serde(default)]
    pub open_seconds: f64,
    /// Host phases of the GPU path (wall clock): reading and decoding inputs, copying them
    /// into pinned buffers, waiting for the device's work, copying results out of pinned
    /// buffers; seconds.
    #[serde(default)]
    pub read_seconds: f64,
    #[serde(default)]
    pub stage_seconds: f64,
    #[serde(default)]
    pub wait_seconds: f64,
    #[serde(default)]
    pub unpack_seconds: f64,
}

impl DeviceReport {
    pub fn cpu(reason: impl Into<String>) -> Self {
        DeviceReport {
            device: "cpu".into(),
            reason: reason.into(),
            ..Default::default()
        }
    }
}

/// The device one rank runs an operation's kernels on.
#[derive(Clone, Default)]
pub enum Backend {
    /// The CPU kernels (the reference), with why a GPU was not used where `auto` could have.
    #[default]
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda(std::sync::Arc<cuda::Gpu>),
}

impl Backend {
    pub fn is_gpu(&self) -> bool {
        !matches!(self, Backend::Cpu)
    }
}

/// A backend and the line that explains it (logged, and kept for the report).
#[derive(Clone, Default)]
pub struct Selected {
    pub backend: Backend,
    pub reason: String,
}

/// Bytes of `--gpu-memory-limit` (e.g. `8G`), or by default the given fraction of the device's
/// free memory shared by the ranks of this node that use the same device.
fn memory_limit(flag: Option<&str>, free: u64, sharing: usize, fraction: f64) -> Result<u64> {
    match flag {
        Some(text) => {
            let bytes = crate::units::parse_size(text).map_err(|_| {
                Error::parameter(
                    "gpu-memory-limit",
                    format!("{text:?} is not a size like 512M or 8G"),
                )
            })?;
            if bytes == 0 {
                return Err(Error::parameter("gpu-memory-limit", "must be more than 0"));
            }
            Ok(bytes)
        }
        None => Ok((free as f64 * fraction / sharing.max(1) as f64) as u64),
    }
}

/// The device a rank uses and how many ranks of its node share it: `cuda:N` puts every rank
/// on N; otherwise node-local rank `local` takes device `local % count`.
pub fn device_for(
    ordinal: Option<usize>,
    local: usize,
    local_size: usize,
    count: usize,
) -> (usize, usize) {
    let count = count.max(1);
    match ordinal {
        Some(n) => (n, local_size.max(1)),
        None => {
            let device = local % count;
            let sharing = (0..local_size.max(1))
                .filter(|r| r % count == device)
                .count();
            (device, sharing.max(1))
        }
    }
}

/// Default share of a device's free memory that its ranks use together.
pub const DEFAULT_MEMORY_FRACTION: f64 = 0.8;

/// Picks this rank's device for operation `op` (collective: every rank calls it). `has_kernel`:
/// whether the operation has a GPU kernel for these inputs. Logs one line per rank.
///
/// # Errors
/// `--device cuda` where no GPU can be used (driver, device, NVRTC), a bad
/// `--gpu-memory-limit`.
pub fn select(
    choice: DeviceChoice,
    gpu_memory_limit: Option<&str>,
    comm: &dyn Comm,
    op: &str,
    has_kernel: bool,
) -> Result<Selected> {
    // A bad limit is refused whether or not a GPU is used: the same job on a GPU node
    // would fail later.
    if let Some(text) = gpu_memory_limit {
        memory_limit(Some(text), 0, 1, 0.0)?;
    }
    let (local, local_size) = comm.node_local();
    let selected = match choice {
        DeviceChoice::Cpu => Ok(Selected {
            backend: Backend::Cpu,
            reason: "--device cpu".into(),
        }),
        DeviceChoice::Auto if !has_kernel => Ok(Selected {
            backend: Backend::Cpu,
            reason: format!("{op} has no GPU kernel for these inputs"),
        }),
        DeviceChoice::Auto => Ok(
            open(None, local, local_size, gpu_memory_limit).unwrap_or_else(|e| Selected {
                backend: Backend::Cpu,
                reason: e.to_string(),
            }),
        ),
        DeviceChoice::Cuda(_) if !has_kernel => Err(Error::parameter(
            "device",
            format!("{op} has no GPU kernel for these inputs; use --device cpu or auto"),
        )),
        DeviceChoice::Cuda(ordinal) => open(ordinal, local, local_size, gpu_memory_limit),
    };
    let selected = crate::comm::agree(comm, selected)?;
    match &selected.backend {
        Backend::Cpu => tracing::info!(
            "rank {}: {op} on the CPU ({})",
            comm.rank(),
            selected.reason
        ),
        #[cfg(feature = "cuda")]
        Backend::Cuda(gpu) => {
            let r = gpu.report_template();
            tracing::info!(
                "rank {}: {op} on {} ({}, {}; {} of device memory)",
                comm.rank(),
                r.device,
                r.name,
                r.uuid,
                crate::units::human_bytes(gpu.memory_limit())
            )
        }
    }
    Ok(selected)
}

#[cfg(feature = "cuda")]
fn open(
    ordinal: Option<usize>,
    local: usize,
    local_size: usize,
    gpu_memory_limit: Option<&str>,
) -> Result<Selected> {
    // cudarc panics where it meets a driver it cannot use; that is an error here, not a crash.
    let gpu =
        std::panic::catch_unwind(|| cuda::Gpu::open(ordinal, local, local_size, gpu_memory_limit))
            .unwrap_or_else(|_| {
                Err(Error::gpu(
                    "the CUDA driver failed while opening the device (see the message above)",
                ))
            })?;
    Ok(Selected {
        reason: String::new(),
        backend: Backend::Cuda(gpu),
    })
}

#[cfg(not(feature = "cuda"))]
fn open(
    _ordinal: Option<usize>,
    _local: usize,
    _local_size: usize,
    _gpu_memory_limit: Option<&str>,
) -> Result<Selected> {
    Err(Error::without_cuda("--device cuda"))
}

impl Selected {
    /// The CPU, for `reason`.
    pub fn cpu(reason: impl Into<String>) -> Self {
        Selected {
            backend: Backend::Cpu,
            reason: reason.into(),
        }
    }

    /// This rank's report: the device and, on a GPU, its phases so far.
    pub fn report(&self) -> DeviceReport {
        match &self.backend {
            Backend::Cpu => DeviceReport::cpu(&self.reason),
            #[cfg(feature = "cuda")]
            Backend::Cuda(gpu) => gpu.report(),
        }
    }
}

/// Operations with GPU kernels, for `tessera gpu info`.
const GPU_OPERATIONS: &str =
    "quilt unstitch, quilt stitch, hdr merge (Debevec), pyramid (every method), crop (both passes)";

/// `tessera gpu info`: prints the driver, NVRTC and devices.
///
/// # Errors
/// None: what is missing is printed.
pub fn info() -> Result<()> {
    println!("operations with GPU kernels: {GPU_OPERATIONS}");
    #[cfg(not(feature = "cuda"))]
    println!("this tessera was built without the \"cuda\" feature: every kernel runs on the CPU");
    #[cfg(feature = "cuda")]
    {
        match cuda::nvrtc_version() {
            Some((a, b)) => println!("NVRTC: {a}.{b}"),
            None => println!("NVRTC: not found (libnvrtc.so.13 on the library path)"),
        }
        if !cuda::driver_present() {
            println!("CUDA driver: not found (libcuda.so.1): --device auto runs on the CPU");
            return Ok(());
        }
        for line in cuda::devices() {
            println!("{line}");
        }
    }
    Ok(())
}

/// `tessera gpu compile --cache`: every kernel's machine code for each architecture
/// (`compute_90` or `sm_90`, both meaning sm_90) into the kernel cache, so that the jobs that
/// follow on this node load them without compiling.
#[cfg(feature = "cuda")]
fn fill_kernel_cache(architectures: &[String]) -> Result<()> {
    let Some(dir) = cache::directory() else {
        return Err(Error::gpu(
            "the kernel cache is off (TESSERA_KERNEL_CACHE=off) or has no place (no HOME)",
        ));
    };
    for arch in architectures {
        let machine = arch.replace("compute_", "sm_");
        for k in kernels::ALL {
            let t = std::time::Instant::now();
            let (cubin, hit) = cuda::cached_machine_code(k, &machine)?;
            println!(
                "{machine} {}.cu: {} bytes of machine code, {} in {:.2} s",
                k.name,
                cubin.len(),
                if hit {
                    "already cached"
                } else {
                    "compiled and cached"
                },
                t.elapsed().as_secs_f64()
            );
        }
    }
    println!("kernel cache: {}", dir.display());
    Ok(())
}

/// Real architectures whose ptxas report `tessera gpu resources` reads by default: the A100's
/// and the H100/H200's.
pub const REPORTED_ARCHITECTURES: &[&str] = &["sm_80", "sm_90"];

/// The most registers a kernel may use (`tessera gpu resources --check`): 128 keeps at least
/// 512 threads (16 warps) resident per SM of 64k registers, enough to hide memory latency in
/// these bandwidth-bound kernels; stitch, the largest (two bands x 4 channels x 2 f64
/// accumulators in registers), needs all of it; every other kernel uses at most 84 (sm_90).
pub const MAX_REGISTERS: u32 = 128;

/// `tessera gpu resources`: ptxas' report (registers, stack frame, spills) of every kernel
/// function for each real architecture, through NVRTC (no GPU needed). With `check`, fails
/// when a kernel keeps anything in local memory (a stack frame or spills): such a kernel reads
/// and writes per-thread arrays through the caches and DRAM instead of registers.
///
/// # Errors
/// No NVRTC, a kernel that does not compile, or (`check`) a kernel with local memory.
pub fn resources_all(architectures: &[String], check: bool) -> Result<()> {
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (architectures, check);
        Err(Error::without_cuda("tessera gpu resources"))
    }
    #[cfg(feature = "cuda")]
    {
        let mut local = Vec::new();
        for arch in architectures {
            for k in kernels::ALL {
                for r in cuda::resources(k, arch)? {
                    println!(
                        "{arch} {}.cu {}: {} registers, {} B stack frame, {} B spill stores, {} B spill loads",
                        k.name, r.function, r.registers, r.stack_frame, r.spill_stores, r.spill_loads
                    );
                    if r.stack_frame + r.spill_stores + r.spill_loads > 0 {
                        local.push(format!("{arch} {}", r.function));
                    }
                    if r.registers > MAX_REGISTERS {
                        local.push(format!(
                            "{arch} {} ({} registers, more than {MAX_REGISTERS})",
                            r.function, r.registers
                        ));
                    }
                }
            }
        }
        println!(
            "{} kernel function(s) keep data in local memory or use more than {MAX_REGISTERS} registers{}",
            local.len(),
            if local.is_empty() {
                String::new()
            } else {
                format!(": {}", local.join(", "))
            }
        );
        if check && !local.is_empty() {
            return Err(Error::gpu(format!(
                "{} kernel function(s) have a stack frame, spills or too many registers: {}",
                local.len(),
                local.join(", ")
            )));
        }
        Ok(())
    }
}

/// `tessera gpu compile`: compiles every kernel for each architecture with NVRTC.
///
/// # Errors
/// The first kernel that does not compile (with NVRTC's log), or no NVRTC.
pub fn compile_all(architectures: &[String], fill_cache: bool) -> Result<()> {
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (architectures, fill_cache);
        Err(Error::without_cuda("tessera gpu compile"))
    }
    #[cfg(feature = "cuda")]
    {
        if !cuda::nvrtc_present() {
            return Err(Error::gpu(
                "NVRTC (libnvrtc.so.13) not found on the library path; install the CUDA toolkit's NVRTC or the nvidia-cuda-nvrtc wheel (scripts/setup.sh --nvrtc) and add its lib folder to LD_LIBRARY_PATH",
            ));
        }
        if fill_cache {
            return fill_kernel_cache(architectures);
        }
        let mut failures = Vec::new();
        for arch in architectures {
            for k in kernels::ALL {
                let t = std::time::Instant::now();
                match cuda::compile(k, arch) {
                    // --fmad=false must leave no fused multiply-add: the CPU kernels round
                    // every product and every sum.
                    Ok(ptx) if ptx.to_src().contains("fma.rn.f") => {
                        eprintln!("{arch} {}.cu: the PTX has fma instructions", k.name);
                        failures.push(format!("{}.cu ({arch}, fma)", k.name));
                    }
                    Ok(ptx) => println!(
                        "{arch} {}.cu: {} kernel(s), {} bytes of PTX, no fma, {:.2} s",
                        k.name,
                        k.functions.len(),
                        ptx.to_src().len(),
                        t.elapsed().as_secs_f64()
                    ),
                    Err(e) => {
                        eprintln!("{e}");
                        failures.push(format!("{}.cu ({arch})", k.name));
                    }
                }
            }
        }
        if failures.is_empty() {
            println!(
                "all {} kernel sources compile for {}",
                kernels::ALL.len(),
                architectures.join(", ")
            );
            Ok(())
        } else {
            Err(Error::gpu(format!(
                "{} do not compile (NVRTC's log above)",
                failures.join(", ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_choices_parse_and_print() {
        for (text, choice) in [
            ("auto", DeviceChoice::Auto),
            ("cpu", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda(None)),
            ("CUDA:1", DeviceChoice::Cuda(Some(1))),
        ] {
            assert_eq!(text.parse::<DeviceChoice>(), Ok(choice));
            assert_eq!(choice.to_string().parse::<DeviceChoice>(), Ok(choice));
        }
        for bad in ["", "cuda:", "cuda:x", "cuda:-1", "tpu"] {
            let e = bad.parse::<DeviceChoice>().unwrap_err();
            assert!(e.contains("expected"), "{bad}: {e}");
        }
    }

    #[test]
    fn ranks_spread_over_a_nodes_devices() {
        // 8 ranks on a node with 4 GPUs: two per device.
        assert_eq!(device_for(None, 5, 8, 4), (1, 2));
        // 3 ranks, 2 GPUs: device 0 has ranks 0 and 2.
        assert_eq!(device_for(None, 2, 3, 2), (0, 2));
        assert_eq!(device_for(None, 1, 3, 2), (1, 1));
        // More GPUs than ranks: one each, the rest idle.
        assert_eq!(device_for(None, 1, 2, 8), (1, 1));
        // cuda:N: everyone on N.
        assert_eq!(device_for(Some(3), 1, 4, 8), (3, 4));
        // One process.
        assert_eq!(device_for(None, 0, 1, 1), (0, 1));
    }

    #[test]
    fn memory_limit_defaults_to_a_share_of_free_memory() {
        assert_eq!(memory_limit(None, 1000, 2, 0.8).unwrap(), 400);
        assert_eq!(memory_limit(Some("1K"), 1000, 2, 0.8).unwrap(), 1024);
        assert!(memory_limit(Some("0"), 1000, 1, 0.8)
            .unwrap_err()
            .to_string()
            .starts_with("--gpu-memory-limit:"));
    }

    #[test]
    fn cpu_is_chosen_without_asking_the_driver() {
        let s = select(DeviceChoice::Cpu, None, &crate::comm::Local, "x", true).unwrap();
        assert!(!s.backend.is_gpu());
        let s = select(DeviceChoice::Auto, None, &crate::comm::Local, "x", false).unwrap();
        assert!(!s.backend.is_gpu());
        assert!(s.reason.contains("no GPU kernel"));
        let e = select(
            DeviceChoice::Cuda(None),
            None,
            &crate::comm::Local,
            "x",
            false,
        )
        .err()
        .unwrap();
        assert!(e.to_string().starts_with("--device:"));
    }
}
