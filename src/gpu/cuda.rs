//! CUDA through cudarc (feature `cuda`): opening a rank's device, compiling kernels with NVRTC
//! (once per process and device), two streams (copies in; kernels and copies out), pinned
//! staging buffers kept between units, and the device phase timings of the run report.
//!
//! The operations' GPU code (`ops/<op>/cuda.rs`) uses only what this module exports.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use cudarc::driver::{
    sys, CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchArgs, LaunchConfig,
    PinnedHostSlice, PushKernelArg,
};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaModule, DevicePtr, DevicePtrMut, DriverError, HostSlice,
};
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};
use ndarray::{ArrayD, IxDyn};

use super::kernels::KernelSource;
use super::DeviceReport;
use crate::error::{Error, Result};
use crate::io::{Block, DType, Element};

fn driver_error(what: &str, e: DriverError) -> Error {
    Error::gpu(format!("{what}: {e:?}"))
}

/// Whether the CUDA driver library can be loaded (without it cudarc panics).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library by its names.
    unsafe { sys::is_culib_present() }
}

/// Whether NVRTC can be loaded (`libnvrtc.so.13` on the library path).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the NVRTC library by its names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// NVRTC's version, e.g. (13, 0).
pub fn nvrtc_version() -> Option<(i32, i32)> {
    if !nvrtc_present() {
        return None;
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is present (checked above); writes two ints we own.
    let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    (status == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS).then_some((major, minor))
}

/// Compiles one kernel source to PTX for `arch` (e.g. `compute_90`), with the options every
/// tessera kernel is built with: no FMA contraction, IEEE division and square root, no
/// flush-to-zero (the CPU kernels' arithmetic).
///
/// # Errors
/// NVRTC missing, or the compiler's log.
pub fn compile(kernel: &KernelSource, arch: &str) -> Result<Ptx> {
    if !nvrtc_present() {
        return Err(Error::gpu(
            "NVRTC (libnvrtc.so.13) not found on the library path; install the CUDA toolkit or the nvidia-cuda-nvrtc wheel and add its lib folder to LD_LIBRARY_PATH",
        ));
    }
    let options = CompileOptions {
        options: nvrtc_options(arch),
        name: Some(format!("{}.cu", kernel.name)),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(kernel.source(), options).map_err(|e| match e {
        CompileError::CompileError { log, .. } => Error::gpu(format!(
            "{}.cu does not compile for {arch}:\n{}",
            kernel.name,
            log.to_string_lossy().trim_end()
        )),
        other => Error::gpu(format!("{}.cu: NVRTC: {other:?}", kernel.name)),
    })
}

/// The NVRTC options every tessera kernel is compiled with, for PTX (`compute_90`) or
/// machine code (`sm_90`): no FMA contraction, IEEE division and square root, no
/// flush-to-zero (the CPU kernels' arithmetic).
fn nvrtc_options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++14".into(),
        "--fmad=false".into(),
        "--prec-div=true".into(),
        "--prec-sqrt=true".into(),
        "--ftz=false".into(),
    ]
}

/// Compiles `kernel` to machine code (cubin) for a real architecture (`sm_90`), so the driver
/// has nothing left to compile; `extra` options are appended (ptxas' `-v`). Returns the cubin
/// and NVRTC's log.
///
/// # Errors
/// NVRTC missing, or the compiler's log.
fn compile_machine_code(
    kernel: &KernelSource,
    arch: &str,
    extra: &[&str],
) -> Result<(Vec<u8>, String)> {
    use cudarc::nvrtc::{result, sys as nvrtc_sys};
    if !nvrtc_present() {
        return Err(Error::gpu(
            "NVRTC (libnvrtc.so.13) not found on the library path",
        ));
    }
    let source = std::ffi::CString::new(kernel.source())
        .map_err(|e| Error::gpu(format!("{}.cu: {e}", kernel.name)))?;
    let name = std::ffi::CString::new(format!("{}.cu", kernel.name)).unwrap_or_default();
    let mut options = nvrtc_options(arch);
    options.extend(extra.iter().map(|o| o.to_string()));
    let program = result::create_program(&source, Some(&name))
        .map_err(|e| Error::gpu(format!("{}.cu: NVRTC: {e:?}", kernel.name)))?;
    // SAFETY: `program` was just created and is destroyed once, below; the log and the cubin
    // are read before that, into buffers of the sizes NVRTC reports.
    let (compiled, log, cubin) = unsafe {
        let compiled = result::compile_program(program, &options);
        let log = result::get_program_log(program).unwrap_or_default();
        let mut cubin = Vec::new();
        if compiled.is_ok() {
            let mut size = 0usize;
            if nvrtc_sys::nvrtcGetCUBINSize(program, &mut size)
                == nvrtc_sys::nvrtcResult::NVRTC_SUCCESS
            {
                cubin = vec![0u8; size];
                if nvrtc_sys::nvrtcGetCUBIN(program, cubin.as_mut_ptr().cast())
                    != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS
                {
                    cubin.clear();
                }
            }
        }
        let _ = result::destroy_program(program);
        (compiled, log, cubin)
    };
    let log: String = log
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8 as char)
        .collect();
    if compiled.is_err() {
        return Err(Error::gpu(format!(
            "{}.cu does not compile for {arch}:\n{}",
            kernel.name,
            log.trim_end()
        )));
    }
    if cubin.is_empty() {
        return Err(Error::gpu(format!(
            "{}.cu: NVRTC gave no machine code for {arch} (a virtual architecture?)",
            kernel.name
        )));
    }
    Ok((cubin, log))
}

/// The machine code of `kernel` for `arch` (`sm_90`) from the kernel cache, compiled and
/// stored there when missing or unusable (`gpu::cache`). Returns it and whether the cache had
/// it.
///
/// # Errors
/// NVRTC missing, or the compiler's log.
pub fn cached_machine_code(kernel: &KernelSource, arch: &str) -> Result<(Vec<u8>, bool)> {
    let compiler = nvrtc_version().map_or("nvrtc ?".into(), |(a, b)| format!("nvrtc {a}.{b}"));
    let key = super::cache::key(&kernel.source(), arch, &nvrtc_options(arch), &compiler);
    super::cache::get_or_compile(
        super::cache::directory().as_deref(),
        kernel.name,
        arch,
        &key,
        || compile_machine_code(kernel, arch, &[]).map(|(cubin, _)| cubin),
    )
}

/// What ptxas reports for one kernel function compiled for a real architecture.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelResources {
    pub function: String,
    pub registers: u32,
    /// Bytes of local memory per thread for arrays and saved registers.
    pub stack_frame: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
}

/// Compiles `kernel` for a real architecture (`sm_90`) with the options of [`compile`] and
/// ptxas' verbose report, and returns the report per kernel function. No GPU needed.
///
/// # Errors
/// NVRTC missing, or the compiler's log.
pub fn resources(kernel: &KernelSource, arch: &str) -> Result<Vec<KernelResources>> {
    let (_, log) = compile_machine_code(kernel, arch, &["--ptxas-options=-v"])?;
    Ok(parse_ptxas_report(&log))
}

/// The per-function facts of ptxas' `-v` report: `Function properties for F` followed by
/// `N bytes stack frame, S bytes spill stores, L bytes spill loads`, and `Compiling entry
/// function 'F'` followed by `Used R registers`.
pub fn parse_ptxas_report(log: &str) -> Vec<KernelResources> {
    let mut found: Vec<KernelResources> = Vec::new();
    let mut current: Option<usize> = None;
    let number_before = |line: &str, what: &str| -> Option<u32> {
        let at = line.find(what)?;
        line[..at].split_whitespace().last()?.parse().ok()
    };
    let entry = |found: &mut Vec<KernelResources>, name: &str| -> usize {
        if let Some(i) = found.iter().position(|k| k.function == name) {
            return i;
        }
        found.push(KernelResources {
            function: name.to_string(),
            ..Default::default()
        });
        found.len() - 1
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default();
            current = Some(entry(&mut found, name));
        } else if let Some(rest) = line.split("Function properties for ").nth(1) {
            current = Some(entry(&mut found, rest.trim()));
        } else if let Some(i) = current {
            let k = &mut found[i];
            if line.contains("bytes stack frame") {
                k.stack_frame = number_before(line, "bytes stack frame").unwrap_or(0);
                k.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
                k.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
            } else if line.contains("Used ") && line.contains(" registers") {
                k.registers = number_before(line, "registers").unwrap_or(0);
            }
        }
    }
    found
}

/// One line per visible device: ordinal, name, UUID, compute capability, memory.
pub fn devices() -> Vec<String> {
    let count = match CudaContext::device_count() {
        Ok(n) => n.max(0) as usize,
        Err(e) => return vec![format!("CUDA driver: cannot count devices: {e:?}")],
    };
    let mut lines = vec![format!(
        "CUDA driver: {count} visible device(s){}",
        std::env::var("CUDA_VISIBLE_DEVICES")
            .map(|v| format!(" (CUDA_VISIBLE_DEVICES={v})"))
            .unwrap_or_default()
    )];
    for n in 0..count {
        lines.push(match CudaContext::new(n) {
            Ok(ctx) => {
                let (major, minor) = ctx.compute_capability().unwrap_or((0, 0));
                let (free, total) = ctx.mem_get_info().unwrap_or((0, 0));
                format!(
                    "cuda:{n}: {} ({}), compute {major}.{minor}, {} free of {}",
                    ctx.name().unwrap_or_default(),
                    ctx.uuid().map(|u| uuid_text(&u.bytes)).unwrap_or_default(),
                    crate::units::human_bytes(free as u64),
                    crate::units::human_bytes(total as u64)
                )
            }
            Err(e) => format!("cuda:{n}: cannot open: {e:?}"),
        });
    }
    lines
}

/// Where a device's time went, summed over the run (CUDA events, so GPU time, not host time).
#[derive(Clone, Copy, Debug, Default)]
struct Phases {
    h2d_seconds: f64,
    h2d_bytes: u64,
    kernel_seconds: f64,
    d2h_seconds: f64,
    d2h_bytes: u64,
    compile_seconds: f64,
    read_seconds: f64,
    stage_seconds: f64,
    wait_seconds: f64,
    unpack_seconds: f64,
}

/// A host phase of the GPU path, timed by the wall clock ([`Gpu::host_timed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostPhase {
    /// Reading and decoding a unit's input on the host.
    Read,
    /// Copying it into pinned buffers for the device.
    Stage,
    /// Copying results out of pinned buffers into the unit's output.
    Unpack,
}

/// A device phase being timed: events recorded around it, read once the work is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    HostToDevice,
    Kernel,
    DeviceToHost,
}

struct Pending {
    phase: Phase,
    bytes: u64,
    start: CudaEvent,
    stop: CudaEvent,
}

/// One rank's GPU.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    /// Host-to-device copies.
    copy: Arc<CudaStream>,
    /// Kernels and device-to-host copies (ordered after the copies they read by cudarc's
    /// per-buffer events).
    compute: Arc<CudaStream>,
    memory_limit: u64,
    /// The device's L2 cache and multiprocessors, for kernels that size their grids by them.
    l2_bytes: u64,
    multiprocessors: u64,
    shared_per_block_optin: u64,
    template: DeviceReport,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    phases: Mutex<Phases>,
    pending: Mutex<Vec<Pending>>,
    pinned: Mutex<Vec<PinnedHostSlice<u8>>>,
}

fn uuid_text(bytes: &[std::ffi::c_char; 16]) -> String {
    let b: Vec<u8> = bytes.iter().map(|&c| c as u8).collect();
    let hex = |r: std::ops::Range<usize>| -> String {
        b[r].iter().map(|x| format!("{x:02x}")).collect::<String>()
    };
    format!(
        "GPU-{}-{}-{}-{}-{}",
        hex(0..4),
        hex(4..6),
        hex(6..8),
        hex(8..10),
        hex(10..16)
    )
}

impl Gpu {
    /// Opens device `ordinal`, or by default device `local % count` (the rank's index among the
    /// ranks of its node, so that a node's ranks spread over its GPUs), and checks that NVRTC
    /// is there. Device numbers are those `CUDA_VISIBLE_DEVICES` leaves visible.
    ///
    /// # Errors
    /// No driver, no device, no such device, no NVRTC, a bad memory limit.
    pub fn open(
        ordinal: Option<usize>,
        local: usize,
        local_size: usize,
        memory_flag: Option<&str>,
    ) -> Result<Arc<Gpu>> {
        let started = std::time::Instant::now();
        if !driver_present() {
            return Err(Error::gpu(
                "no CUDA driver (libcuda.so.1 not found): this machine has no usable NVIDIA GPU",
            ));
        }
        let count = CudaContext::device_count()
            .map_err(|e| driver_error("cannot count CUDA devices", e))?
            .max(0) as usize;
        if count == 0 {
            return Err(Error::gpu(match std::env::var("CUDA_VISIBLE_DEVICES") {
                Ok(v) => format!("no CUDA device visible (CUDA_VISIBLE_DEVICES={v})"),
                Err(_) => "the CUDA driver sees no device".into(),
            }));
        }
        if let Some(n) = ordinal.filter(|&n| n >= count) {
            return Err(Error::parameter(
                "device",
                format!("cuda:{n}: this node has {count} visible CUDA device(s), numbered from 0"),
            ));
        }
        let (ordinal, sharing) = super::device_for(ordinal, local, local_size, count);
        if !nvrtc_present() {
            return Err(Error::gpu(
                "NVRTC (libnvrtc.so.13) not found: tessera compiles its kernels at run time; install the CUDA toolkit's NVRTC (or the nvidia-cuda-nvrtc wheel) and put it on LD_LIBRARY_PATH",
            ));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| driver_error(&format!("cannot open cuda:{ordinal}"), e))?;
        let name = ctx.name().unwrap_or_default();
        let uuid = ctx.uuid().map(|u| uuid_text(&u.bytes)).unwrap_or_default();
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| driver_error("compute capability", e))?;
        let (free, _total) = ctx
            .mem_get_info()
            .map_err(|e| driver_error("device memory", e))?;
        // Ranks of this node that share this device split its memory.
        let memory_limit = super::memory_limit(
            memory_flag,
            free as u64,
            sharing,
            super::DEFAULT_MEMORY_FRACTION,
        )?;
        let attribute = |a| ctx.attribute(a).map(|v| v.max(1) as u64).unwrap_or(1);
        let l2_bytes = attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE);
        let multiprocessors =
            attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT);
        let shared_per_block_optin = attribute(
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
        );
        let copy = ctx.new_stream().map_err(|e| driver_error("stream", e))?;
        let compute = ctx.new_stream().map_err(|e| driver_error("stream", e))?;
        Ok(Arc::new(Gpu {
            template: DeviceReport {
                device: format!("cuda:{ordinal}"),
                name,
                uuid,
                compute_capability: format!("{major}.{minor}"),
                memory_limit,
                open_seconds: started.elapsed().as_secs_f64(),
                ..Default::default()
            },
            ctx,
            copy,
            compute,
            memory_limit,
            l2_bytes,
            multiprocessors,
            shared_per_block_optin,
            modules: Mutex::new(HashMap::new()),
            phases: Mutex::new(Phases::default()),
            pending: Mutex::new(Vec::new()),
            pinned: Mutex::new(Vec::new()),
        }))
    }

    /// The device's L2 cache, bytes (1 where the driver does not say).
    pub fn l2_bytes(&self) -> u64 {
        self.l2_bytes
    }

    /// The most shared memory a block may have when its kernel opts in, bytes.
    pub fn shared_per_block_optin(&self) -> u64 {
        self.shared_per_block_optin
    }

    /// The device's streaming multiprocessors (1 where the driver does not say).
    pub fn multiprocessors(&self) -> u64 {
        self.multiprocessors
    }

    /// Device memory this rank may use, bytes (`--gpu-memory-limit`, or its share of the free
    /// memory).
    pub fn memory_limit(&self) -> u64 {
        self.memory_limit
    }

    /// The report's fixed part (device, name, UUID).
    pub fn report_template(&self) -> &DeviceReport {
        &self.template
    }

    /// This rank's device report: the fixed part and the phases so far.
    pub fn report(&self) -> DeviceReport {
        let _ = self.settle();
        let p = *self.phases.lock().expect("phases");
        DeviceReport {
            h2d_seconds: p.h2d_seconds,
            h2d_bytes: p.h2d_bytes,
            kernel_seconds: p.kernel_seconds,
            d2h_seconds: p.d2h_seconds,
            d2h_bytes: p.d2h_bytes,
            compile_seconds: p.compile_seconds,
            read_seconds: p.read_seconds,
            stage_seconds: p.stage_seconds,
            wait_seconds: p.wait_seconds,
            unpack_seconds: p.unpack_seconds,
            ..self.template.clone()
        }
    }

    /// Runs `work` on the host, adding its wall-clock seconds to `phase` of the report.
    pub fn host_timed<R>(&self, phase: HostPhase, work: impl FnOnce() -> R) -> R {
        let t = std::time::Instant::now();
        let out = work();
        self.add_host_seconds(phase, t.elapsed().as_secs_f64());
        out
    }

    /// Adds `seconds` of host work, timed by the caller, to `phase` of the report.
    pub fn add_host_seconds(&self, phase: HostPhase, seconds: f64) {
        let mut p = self.phases.lock().expect("phases");
        match phase {
            HostPhase::Read => p.read_seconds += seconds,
            HostPhase::Stage => p.stage_seconds += seconds,
            HostPhase::Unpack => p.unpack_seconds += seconds,
        }
    }

    /// Waits for everything enqueued on `stream`, counted as waiting for the device.
    ///
    /// # Errors
    /// A failed kernel or copy.
    pub fn wait(&self, stream: &Arc<CudaStream>) -> Result<()> {
        let t = std::time::Instant::now();
        stream
            .synchronize()
            .map_err(launch_error("waiting for the device"))?;
        self.phases.lock().expect("phases").wait_seconds += t.elapsed().as_secs_f64();
        Ok(())
    }

    /// The stream host-to-device copies go on.
    pub fn copy_stream(&self) -> &Arc<CudaStream> {
        &self.copy
    }

    /// The stream kernels and device-to-host copies go on.
    pub fn compute_stream(&self) -> &Arc<CudaStream> {
        &self.compute
    }

    /// Kernel `function` of `kernel`, compiled for this device on first use.
    ///
    /// # Errors
    /// NVRTC's log, or the driver refusing the PTX.
    pub fn function(&self, kernel: &KernelSource, function: &str) -> Result<CudaFunction> {
        let module = {
            let mut modules = self.modules.lock().expect("modules");
            match modules.get(kernel.name) {
                Some(m) => m.clone(),
                None => {
                    let t = Instant::now();
                    let m = self.load(kernel)?;
                    self.phases.lock().expect("phases").compile_seconds +=
                        t.elapsed().as_secs_f64();
                    modules.insert(kernel.name, m.clone());
                    m
                }
            }
        };
        module
            .load_function(function)
            .map_err(|e| driver_error(&format!("{}.cu: kernel {function}", kernel.name), e))
    }

    /// Loads `kernel` for this device: its machine code for the device's own architecture
    /// (`sm_XX`) from the kernel cache, compiled there if missing; where that fails (an NVRTC
    /// too old for the device, a driver that refuses the cubin), PTX for `compute_XX`, which
    /// the driver compiles, with a warning.
    fn load(&self, kernel: &KernelSource) -> Result<Arc<CudaModule>> {
        let digits = self.template.compute_capability.replace('.', "");
        let machine = format!("sm_{digits}");
        let cached = cached_machine_code(kernel, &machine).and_then(|(cubin, hit)| {
            tracing::debug!(
                "{}.cu for {machine}: {}",
                kernel.name,
                if hit {
                    "from the kernel cache"
                } else {
                    "compiled (now cached)"
                }
            );
            self.ctx
                .load_module(Ptx::from_binary(cubin))
                .map_err(|e| driver_error(&format!("loading {}.cu for {machine}", kernel.name), e))
        });
        match cached {
            Ok(m) => Ok(m),
            Err(e) => {
                tracing::warn!("{e}; compiling PTX for the driver instead");
                let arch = format!("compute_{digits}");
                let ptx = compile(kernel, &arch)?;
                self.ctx
                    .load_module(ptx)
                    .map_err(|e| driver_error(&format!("loading {}.cu for {arch}", kernel.name), e))
            }
        }
    }

    /// A device buffer of `len` elements, on the stream that fills it. Refused (not tried)
    /// beyond the rank's device memory limit, which the operations plan for.
    ///
    /// # Errors
    /// Out of device memory.
    pub fn alloc<T: DeviceRepr>(
        &self,
        stream: &Arc<CudaStream>,
        len: usize,
    ) -> Result<CudaSlice<T>> {
        // SAFETY: every buffer is written (by a copy or a kernel) before it is read.
        unsafe { stream.alloc::<T>(len.max(1)) }.map_err(|e| {
            driver_error(
                &format!(
                    "allocating {} on {}",
                    crate::units::human_bytes((len * std::mem::size_of::<T>()) as u64),
                    self.template.device
                ),
                e,
            )
        })
    }

    /// A device buffer of `len` zeros.
    ///
    /// # Errors
    /// Out of device memory.
    pub fn zeros<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        stream: &Arc<CudaStream>,
        len: usize,
    ) -> Result<CudaSlice<T>> {
        stream
            .alloc_zeros::<T>(len.max(1))
            .map_err(|e| driver_error("allocating device memory", e))
    }

    /// A pinned (page-locked) host buffer of at least `bytes`, from the pool (allocated once,
    /// reused by later units; pinned memory is slow to allocate and twice as fast to copy).
    /// Not write-combined: results are read back from these too.
    ///
    /// # Errors
    /// The driver refusing to pin the memory.
    pub fn pinned(&self, bytes: usize) -> Result<PinnedHostSlice<u8>> {
        let mut pool = self.pinned.lock().expect("pinned pool");
        // Best fit: the smallest buffer that is large enough.
        let fit = (0..pool.len())
            .filter(|&i| pool[i].len() >= bytes && pool[i].len() <= 2 * bytes.max(1 << 20))
            .min_by_key(|&i| pool[i].len());
        if let Some(i) = fit {
            return Ok(pool.swap_remove(i));
        }
        drop(pool);
        // Rounded up so that slightly larger later units reuse the buffer.
        let len = bytes.max(1).next_multiple_of(1 << 20);
        // SAFETY: the buffer is written before it is read (copies into it, or host fills).
        unsafe { self.ctx.alloc_pinned_with_flags::<u8>(len, 0) }.map_err(|e| {
            driver_error(
                &format!(
                    "pinning {} of host memory",
                    crate::units::human_bytes(len as u64)
                ),
                e,
            )
        })
    }

    /// Sends the first `len` bytes of a pinned buffer to the start of `dst` on the copy stream,
    /// asynchronously (the buffer's own event keeps the host from rewriting it before the copy
    /// is done, and `dst`'s from reading it early); timed as host-to-device.
    ///
    /// # Errors
    /// `dst` shorter than `len`, or the driver's error.
    pub fn send(
        &self,
        pinned: &PinnedHostSlice<u8>,
        len: usize,
        dst: &mut impl DevicePtrMut<u8>,
    ) -> Result<()> {
        if dst.len() < len || pinned.len() < len {
            return Err(Error::gpu(format!(
                "internal: a copy of {len} bytes into a buffer of {}",
                dst.len()
            )));
        }
        let stream = &self.copy;
        self.copy_timed(
            Phase::HostToDevice,
            "copy to the device",
            len,
            stream,
            || {
                // SAFETY: what memcpy_htod does, for a prefix of the host buffer: the stream waits
                // for the pinned buffer's and dst's earlier uses, and both record this one (their
                // guards drop after the copy is enqueued).
                unsafe {
                    let (src, _src_done) = pinned.stream_synced_slice(stream);
                    let (ptr, _dst_done) = dst.device_ptr_mut(stream);
                    cudarc::driver::result::memcpy_htod_async(ptr, &src[..len], stream.cu_stream())
                }
            },
        )
    }

    /// The first `bytes` bytes of `src` in a pinned buffer from the pool (hand it back with
    /// [`Gpu::give_back`]), copied on `stream` asynchronously and timed as device-to-host: read
    /// the buffer after the stream is synchronized (or through `as_slice`, which waits).
    ///
    /// The copy is exactly `bytes` long. cudarc's `memcpy_dtoh` copies as many bytes as the
    /// host buffer holds, and pool buffers are rounded up to whole MiB: it read past the end of
    /// smaller device buffers (CUDA_ERROR_INVALID_VALUE, seen on an H200).
    ///
    /// # Errors
    /// `src` shorter than `bytes`, pinned memory, or the driver's error.
    pub fn receive<T>(
        &self,
        stream: &Arc<CudaStream>,
        src: &impl DevicePtr<T>,
        bytes: usize,
    ) -> Result<PinnedHostSlice<u8>> {
        if src.num_bytes() < bytes {
            return Err(Error::gpu(format!(
                "internal: a copy of {bytes} bytes out of a device buffer of {}",
                src.num_bytes()
            )));
        }
        let mut host = self.pinned(bytes)?;
        self.copy_timed(
            Phase::DeviceToHost,
            "copy from the device",
            bytes,
            stream,
            || {
                // SAFETY: what memcpy_dtoh does, into a prefix of the host buffer: the stream waits
                // for the pinned buffer's and src's earlier uses, and both record this one (their
                // guards drop after the copy is enqueued); `bytes` fit in both.
                unsafe {
                    let (dst, _dst_done) = host.stream_synced_mut_slice(stream);
                    let (ptr, _src_done) = src.device_ptr(stream);
                    cudarc::driver::result::memcpy_dtoh_async(
                        &mut dst[..bytes],
                        ptr,
                        stream.cu_stream(),
                    )
                }
            },
        )?;
        Ok(host)
    }

    /// Enqueues one copy of `bytes` bytes on `stream` (with this context bound to the
    /// thread), timed as `phase`; a driver error is named `what`.
    fn copy_timed(
        &self,
        phase: Phase,
        what: &str,
        bytes: usize,
        stream: &Arc<CudaStream>,
        copy: impl FnOnce() -> std::result::Result<(), DriverError>,
    ) -> Result<()> {
        self.timed(phase, bytes as u64, stream, || {
            self.ctx
                .bind_to_thread()
                .map_err(|e| driver_error(what, e))?;
            copy().map_err(|e| driver_error(what, e))
        })
    }

    /// `len` bytes, written by `fill` into a pinned buffer, in a fresh device buffer: sent on
    /// the copy stream, the compute stream then waiting for them (a unit's input).
    ///
    /// # Errors
    /// Pinned or device memory, the driver's.
    pub fn stage(&self, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<CudaSlice<u8>> {
        let mut pin = self.pinned(len)?;
        let host = pin.as_mut_slice().map_err(launch_error("pinned buffer"))?;
        self.host_timed(HostPhase::Stage, || fill(&mut host[..len]));
        let mut dev = self.alloc::<u8>(&self.copy, len)?;
        self.send(&pin, len, &mut dev)?;
        self.give_back(pin);
        self.inputs_sent()?;
        Ok(dev)
    }

    /// Hands a pinned buffer back to the pool.
    pub fn give_back(&self, buffer: PinnedHostSlice<u8>) {
        let mut pool = self.pinned.lock().expect("pinned pool");
        pool.push(buffer);
        // A bounded pool: the smallest go first (units of one run are alike in size).
        if pool.len() > 8 {
            let smallest = (0..pool.len()).min_by_key(|&i| pool[i].len()).unwrap_or(0);
            pool.swap_remove(smallest);
        }
    }

    /// Runs `work` (which enqueues on `stream`) between two timing events, counting `bytes`
    /// for `phase`; read by [`Gpu::settle`].
    ///
    /// # Errors
    /// What `work` returns, or event failures.
    pub fn timed<R>(
        &self,
        phase: Phase,
        bytes: u64,
        stream: &Arc<CudaStream>,
        work: impl FnOnce() -> Result<R>,
    ) -> Result<R> {
        let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self
            .ctx
            .new_event(flags)
            .map_err(|e| driver_error("event", e))?;
        start.record(stream).map_err(|e| driver_error("event", e))?;
        let result = work()?;
        let stop = self
            .ctx
            .new_event(flags)
            .map_err(|e| driver_error("event", e))?;
        stop.record(stream).map_err(|e| driver_error("event", e))?;
        self.pending.lock().expect("pending").push(Pending {
            phase,
            bytes,
            start,
            stop,
        });
        Ok(result)
    }

    /// Makes the compute stream wait for every copy sent so far, so that a kernel's timing
    /// events measure the kernel, not the wait for its inputs.
    ///
    /// # Errors
    /// The driver's.
    pub fn inputs_sent(&self) -> Result<()> {
        self.compute
            .join(&self.copy)
            .map_err(|e| driver_error("ordering the streams", e))
    }

    /// Waits for the timed work so far and adds it to the phases.
    ///
    /// # Errors
    /// A failed kernel or copy (reported when its events complete).
    pub fn settle(&self) -> Result<()> {
        let pending = std::mem::take(&mut *self.pending.lock().expect("pending"));
        let waiting = std::time::Instant::now();
        for p in &pending {
            p.stop
                .synchronize()
                .map_err(|e| driver_error("waiting for the device", e))?;
        }
        let mut phases = self.phases.lock().expect("phases");
        phases.wait_seconds += waiting.elapsed().as_secs_f64();
        for p in pending {
            let seconds = f64::from(
                p.start
                    .elapsed_ms(&p.stop)
                    .map_err(|e| driver_error("event", e))?,
            ) / 1e3;
            match p.phase {
                Phase::HostToDevice => {
                    phases.h2d_seconds += seconds;
                    phases.h2d_bytes += p.bytes;
                }
                Phase::Kernel => phases.kernel_seconds += seconds,
                Phase::DeviceToHost => {
                    phases.d2h_seconds += seconds;
                    phases.d2h_bytes += p.bytes;
                }
            }
        }
        Ok(())
    }

    /// Times a device-to-device copy of `bytes` (read + written), the yardstick of
    /// `tessera bench --device cuda`: seconds per copy, the best of `repeats`.
    ///
    /// # Errors
    /// Out of device memory.
    pub fn copy_seconds(&self, bytes: usize, repeats: usize) -> Result<f64> {
        let s = &self.compute;
        let src = self.zeros::<u8>(s, bytes)?;
        let mut dst = self.zeros::<u8>(s, bytes)?;
        self.kernel_seconds(repeats, || {
            s.memcpy_dtod(&src, &mut dst)
                .map_err(|e| driver_error("device copy", e))
        })
    }

    /// Device time of `work` (which enqueues on the compute stream): seconds, best of
    /// `repeats`, measured with events.
    ///
    /// # Errors
    /// What `work` returns.
    pub fn kernel_seconds(
        &self,
        repeats: usize,
        mut work: impl FnMut() -> Result<()>,
    ) -> Result<f64> {
        let s = &self.compute;
        let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let event = || {
            self.ctx
                .new_event(flags)
                .map_err(|e| driver_error("event", e))
        };
        let mut best = f64::INFINITY;
        for _ in 0..repeats.max(1) {
            let (a, b) = (event()?, event()?);
            a.record(s).map_err(|e| driver_error("event", e))?;
            work()?;
            b.record(s).map_err(|e| driver_error("event", e))?;
            let ms = a.elapsed_ms(&b).map_err(|e| driver_error("event", e))?;
            best = best.min(f64::from(ms) / 1e3);
        }
        Ok(best)
    }

    /// A host slice in a fresh device buffer, copied on `stream` (small tables, weights, and
    /// the benches' resident data; units go through pinned memory and [`Gpu::send`]).
    ///
    /// # Errors
    /// Device memory, the driver's.
    pub fn upload<T: DeviceRepr>(
        &self,
        stream: &Arc<CudaStream>,
        host: &[T],
    ) -> Result<CudaSlice<T>> {
        let mut dev = self.alloc::<T>(stream, host.len())?;
        self.timed(
            Phase::HostToDevice,
            std::mem::size_of_val(host) as u64,
            stream,
            || {
                stream
                    .memcpy_htod(host, &mut dev)
                    .map_err(|e| driver_error("copy to the device", e))
            },
        )?;
        Ok(dev)
    }
}

/// Launch shape for `n` threads, 256 per block.
pub fn launch_config(n: u64) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, u64::from(u32::MAX >> 1)) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Maps a driver error from a launch or copy to tessera's.
pub fn launch_error(what: &str) -> impl FnOnce(DriverError) -> Error + '_ {
    move |e| driver_error(what, e)
}

/// The suffix of a type in kernel names (`mean_u16`, `crop_analyse_f32`, ...).
pub fn type_suffix(dtype: DType) -> String {
    format!("{dtype:?}").to_ascii_lowercase()
}

/// Writes a block's elements (C order) into `dst`; returns the bytes written.
pub fn write_block_bytes(block: &Block, dst: &mut [u8]) -> usize {
    crate::with_block!(block, a => {
        let a = a.as_standard_layout();
        let src: &[u8] = bytemuck::cast_slice(a.as_slice().expect("standard layout"));
        dst[..src.len()].copy_from_slice(src);
        src.len()
    })
}

/// A block of `dtype` and `shape` from C-order bytes.
pub fn block_from_bytes(dtype: DType, shape: &[usize], bytes: &[u8]) -> Block {
    crate::with_dtype!(dtype, T => {
        let v: Vec<T> = bytemuck::pod_collect_to_vec(bytes);
        T::into_block(ArrayD::from_shape_vec(IxDyn(shape), v).expect("sizes match"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_print_as_nvidia_smi_does() {
        let mut b = [0 as std::ffi::c_char; 16];
        for (i, x) in b.iter_mut().enumerate() {
            *x = (i * 17) as u8 as std::ffi::c_char;
        }
        assert_eq!(uuid_text(&b), "GPU-00112233-4455-6677-8899-aabbccddeeff");
    }

    #[test]
    fn launch_shapes_cover_every_thread() {
        assert_eq!(launch_config(1).grid_dim.0, 1);
        assert_eq!(launch_config(256).grid_dim.0, 1);
        assert_eq!(launch_config(257).grid_dim.0, 2);
    }
}
