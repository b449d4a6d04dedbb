//! `tessera._tessera`: the compiled half of the Python package. Thin on purpose: it turns
//! numpy arrays into ndarray views, releases the GIL, runs the library's own functions on a
//! rayon pool of the asked width, and turns results and `tessera::Error`s back into numpy
//! arrays and Python exceptions. Argument handling, torch conversion and the docstrings users
//! read live in the pure-Python `tessera` package around it.

mod logging;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ndarray::{ArrayD, ArrayViewD};
use numpy::{PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, ToPyArray};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use tessera::io::{DType, Element};
use tessera::job::{GeometryArgs, Job, JobFile};
use tessera::ops::quilt::kernel::Blend;
use tessera::ops::quilt::memory;
use tessera::Error;

/// A `tessera::Error` as the package's exception: `ParameterError` (also a `ValueError`) for
/// what the caller gave, `TesseraError` for the rest; the message is the CLI's error line.
fn raise(py: Python<'_>, e: &Error, hint: bool) -> PyErr {
    let mut message = tessera::error::one_line(&e.to_string());
    if hint {
        if let Some(h) = tessera::io::staging::interrupted_run_hint() {
            message = format!("{message}; {h}");
        }
    }
    let class = match e {
        Error::Parameter { .. }
        | Error::Mismatch { .. }
        | Error::Conversion { .. }
        | Error::Config { .. } => "ParameterError",
        _ => "TesseraError",
    };
    let made = py
        .import("tessera._errors")
        .and_then(|m| m.getattr(class))
        .and_then(|c| c.call1((message.clone(),)));
    match made {
        Ok(value) => PyErr::from_value(value),
        // The package's own module is missing (the extension imported alone): still a
        // Python exception with the message.
        Err(_) => pyo3::exceptions::PyRuntimeError::new_err(message),
    }
}

/// Runs `f` without the GIL on a rayon pool `threads` wide, mapping its error.
fn work<T: Send>(
    py: Python<'_>,
    threads: Option<i64>,
    f: impl FnOnce() -> tessera::Result<T> + Send,
) -> PyResult<T> {
    let pool = pool(threads).map_err(|e| raise(py, &e, false))?;
    py.detach(|| pool.install(f))
        .map_err(|e| raise(py, &e, false))
}

/// The CLI's default threads for one process: `RAYON_NUM_THREADS` when set, else the CPUs of
/// this process's affinity mask.
fn default_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| tessera::exec::threads::affinity().len().max(1))
}

/// A rayon pool of `threads` threads (the default when `None`), built once per width.
fn pool(threads: Option<i64>) -> tessera::Result<Arc<rayon::ThreadPool>> {
    static POOLS: Mutex<Option<HashMap<usize, Arc<rayon::ThreadPool>>>> = Mutex::new(None);
    let n = match threads {
        None => default_threads(),
        Some(n) if n >= 1 => n as usize,
        Some(n) => {
            return Err(Error::parameter(
                "threads",
                format!("must be at least 1, got {n}"),
            ))
        }
    };
    let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    let pools = pools.get_or_insert_with(HashMap::new);
    if let Some(p) = pools.get(&n) {
        return Ok(p.clone());
    }
    let made = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("tessera-{i}"))
        .build()
        .map_err(|e| Error::parameter("threads", format!("cannot start {n} threads: {e}")))?;
    let made = Arc::new(made);
    pools.insert(n, made.clone());
    Ok(made)
}

/// Sizes from Python integers: negative ones refused naming the CLI flag.
fn sizes(flag: &str, values: &[i64]) -> tessera::Result<Vec<u64>> {
    values
        .iter()
        .map(|&v| {
            u64::try_from(v)
                .map_err(|_| Error::parameter(flag, format!("sizes must be non-negative, got {v}")))
        })
        .collect()
}

fn blend(name: &str) -> tessera::Result<Blend> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).map_err(|_| {
        Error::parameter(
            "blend",
            format!("expected border, gaussian or hann, got {name:?}"),
        )
    })
}

/// The quilt geometry as the package's `Quilt._geometry()` passes it: (window, step, border,
/// border_weight, blend, sigma, allow_gaps).
#[derive(FromPyObject)]
struct Geometry(Vec<i64>, Vec<i64>, Vec<i64>, f64, String, f64, bool);

impl Geometry {
    /// As `quilt unstitch`'s flags.
    fn args(&self) -> tessera::Result<GeometryArgs> {
        let Geometry(window, step, border, border_weight, blend_name, sigma, allow_gaps) = self;
        Ok(GeometryArgs {
            window: sizes("window", window)?,
            step: sizes("step", step)?,
            border: sizes("border", border)?,
            border_weight: *border_weight,
            blend: blend(blend_name)?,
            sigma: *sigma,
            allow_gaps: *allow_gaps,
        })
    }
}

/// Declares, from one list of tessera's element types: `Input` (a numpy array of one of
/// them, borrowed read-only), `Input::of` and `with_input!`, which runs a body with `$v`
/// bound to the input's view and `$t` to its element type. `$d` is `$`, for the inner macro.
macro_rules! inputs {
    ($d:tt $($variant:ident: $ty:ty),* $(,)?) => {
        enum Input<'py> {
            $($variant(PyReadonlyArrayDyn<'py, $ty>),)*
        }

        macro_rules! with_input {
            ($d input:expr, $d t:ident, $d v:ident => $d body:expr) => {
                #[allow(dead_code)]
                match &$d input {
                    $(Input::$variant(a) => {
                        type $d t = $ty;
                        let $d v = a.as_array();
                        $d body
                    })*
                }
            };
        }

        impl<'py> Input<'py> {
            fn of(what: &str, obj: &Bound<'py, PyAny>) -> PyResult<Input<'py>> {
                $(if let Ok(a) = obj.cast::<PyArrayDyn<$ty>>() {
                    return Ok(Input::$variant(a.try_readonly()?));
                })*
                let found = obj
                    .getattr("dtype")
                    .map(|d| d.to_string())
                    .unwrap_or_else(|_| obj.get_type().to_string());
                Err(PyTypeError::new_err(format!(
                    "{what}: expected a numpy array of uint8, uint16, uint32, uint64, int8, int16, \
                     int32, int64, float32 or float64, got {found}"
                )))
            }
        }
    };
}

inputs!($
    U8: u8, U16: u16, U32: u32, U64: u64, I8: i8, I16: i16, I32: i32, I64: i64, F32: f32, F64: f64
);

impl<'py> Input<'py> {
    fn dtype(&self) -> DType {
        with_input!(self, T, _v => <T as Element>::DTYPE)
    }

    fn shape(&self) -> Vec<usize> {
        with_input!(self, T, v => v.shape().to_vec())
    }

    /// The values as f64 (how `quilt stitch` sums types other than f32 and f64).
    fn to_f64(&self) -> ArrayD<f64> {
        with_input!(self, T, v => <T as Element>::into_block(v.to_owned()).to_f64())
    }
}

/// Cuts windows out of (N, C, [Z,] Y, X) images: returns (patches, positions).
#[pyfunction]
#[pyo3(signature = (images, geometry, threads))]
fn unstitch<'py>(
    py: Python<'py>,
    images: &Bound<'py, PyAny>,
    geometry: Geometry,
    threads: Option<i64>,
) -> PyResult<Bound<'py, PyTuple>> {
    let args = geometry.args().map_err(|e| raise(py, &e, false))?;
    let input = Input::of("images", images)?;
    with_input!(input, T, view => {
        let cut = work(py, threads, || memory::unstitch::<T>(&view, &args))?;
        let patches = numpy::PyArray::from_owned_array(py, cut.patches);
        let positions = numpy::PyArray::from_owned_array(py, cut.positions);
        PyTuple::new(py, [patches.into_any(), positions.into_any()])
    })
}

/// Stitches (M, C, *window) patches back: returns (mean, weights, std or None, NaN count).
#[pyfunction]
#[pyo3(signature = (patches, variance, spatial, geometry, chunk_rows, threads))]
fn stitch<'py>(
    py: Python<'py>,
    patches: &Bound<'py, PyAny>,
    variance: Option<&Bound<'py, PyAny>>,
    spatial: Vec<i64>,
    geometry: Geometry,
    chunk_rows: Option<i64>,
    threads: Option<i64>,
) -> PyResult<Bound<'py, PyTuple>> {
    let fail = |e: Error| raise(py, &e, false);
    let args = geometry.args().map_err(fail)?;
    let spatial = sizes("shape", &spatial).map_err(fail)?;
    let input = Input::of("patches", patches)?;
    let variance = variance.map(|v| Input::of("variance", v)).transpose()?;
    let shape = input.shape();
    if shape.len() < 2 {
        return Err(fail(Error::mismatch(
            "patches: shape",
            "(M, C, *window)",
            format!("{shape:?}"),
        )));
    }
    // The images: as many as the patches make, with the patches' channels.
    let one = [vec![1, shape[1] as u64], spatial.clone()].concat();
    let per_image = tessera::ops::quilt::QuiltGeometry::new(&one, &args)
        .map_err(fail)?
        .0
        .grid()
        .per_image();
    let m = shape[0] as u64;
    if m == 0 || !m.is_multiple_of(per_image) {
        return Err(fail(Error::mismatch(
            "patches: number of patches",
            format!("a positive multiple of {per_image} (the windows of one image)"),
            m,
        )));
    }
    let geometry = memory::stitch_geometry(&shape, m / per_image, &spatial, &args).map_err(fail)?;
    let dtype = input.dtype();
    let rows = match chunk_rows {
        Some(r) => u64::try_from(r).map_err(|_| {
            fail(Error::parameter(
                "chunks",
                format!("chunk rows must be at least 1, got {r}"),
            ))
        })?,
        None => memory::default_chunk_rows(
            &geometry,
            dtype,
            variance.is_some(),
            memory::DEFAULT_MEMORY_LIMIT,
        )
        .map_err(fail)?,
    };
    let g = &geometry;
    match (&input, &variance) {
        (Input::F32(p), None) => stitched::<f32, f32>(py, threads, &p.as_array(), None, g, rows),
        (Input::F32(p), Some(Input::F32(v))) => {
            stitched::<f32, f32>(py, threads, &p.as_array(), Some(&v.as_array()), g, rows)
        }
        (Input::F64(p), None) => stitched::<f64, f64>(py, threads, &p.as_array(), None, g, rows),
        _ => {
            // Other types (and mixed ones) are summed as f64, as `quilt stitch` does; the
            // output type is the patches': f64 for f64, else f32.
            let p = input.to_f64();
            let v = variance.as_ref().map(Input::to_f64);
            let v = v.as_ref().map(|v| v.view());
            if dtype == DType::F64 {
                stitched::<f64, f64>(py, threads, &p.view(), v.as_ref(), g, rows)
            } else {
                stitched::<f64, f32>(py, threads, &p.view(), v.as_ref(), g, rows)
            }
        }
    }
}

/// [`memory::stitch`] of patches of `P` into `O` on the pool, as the tuple `stitch` returns.
fn stitched<'py, P, O>(
    py: Python<'py>,
    threads: Option<i64>,
    patches: &ArrayViewD<'_, P>,
    variances: Option<&ArrayViewD<'_, P>>,
    geometry: &tessera::ops::quilt::QuiltGeometry,
    rows: u64,
) -> PyResult<Bound<'py, PyTuple>>
where
    P: memory::PatchValue,
    O: tessera::ops::quilt::OutElement + numpy::Element + Send,
{
    let s = work(py, threads, || {
        memory::stitch::<P, O>(patches, variances, geometry, rows)
    })?;
    let std = match s.std {
        Some(a) => numpy::PyArray::from_owned_array(py, a).into_any(),
        None => py.None().into_bound(py),
    };
    PyTuple::new(
        py,
        [
            numpy::PyArray::from_owned_array(py, s.mean).into_any(),
            numpy::PyArray::from_owned_array(py, s.weights).into_any(),
            std,
            s.nan_values.into_pyobject(py)?.into_any(),
        ],
    )
}

/// qlty's border tensor (uint8: 1 inside, 0 in the border band).
#[pyfunction]
fn border_mask<'py>(
    py: Python<'py>,
    window: Vec<i64>,
    border: Vec<i64>,
) -> PyResult<Bound<'py, PyArrayDyn<u8>>> {
    let fail = |e: Error| raise(py, &e, false);
    let window = sizes("window", &window).map_err(fail)?;
    let border = sizes("border", &border).map_err(fail)?;
    let mask = memory::border_mask(&window, &border).map_err(fail)?;
    Ok(numpy::PyArray::from_owned_array(py, mask))
}

/// The stitch's per-pixel window weights (float64, the window's shape).
#[pyfunction]
#[pyo3(signature = (spatial, geometry))]
fn window_weights<'py>(
    py: Python<'py>,
    spatial: Vec<i64>,
    geometry: Geometry,
) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
    let fail = |e: Error| raise(py, &e, false);
    let args = geometry.args().map_err(fail)?;
    let spatial = sizes("shape", &spatial).map_err(fail)?;
    let shape = [vec![1, 1], spatial].concat();
    let (geometry, _) = tessera::ops::quilt::QuiltGeometry::new(&shape, &args).map_err(fail)?;
    Ok(memory::window_weights(&geometry).to_pyarray(py))
}

/// Windows per spatial axis for an image of `spatial` (qlty's `get_times`).
#[pyfunction]
#[pyo3(signature = (spatial, window, step, allow_gaps))]
fn window_counts(
    py: Python<'_>,
    spatial: Vec<i64>,
    window: Vec<i64>,
    step: Vec<i64>,
    allow_gaps: bool,
) -> PyResult<Vec<u64>> {
    let fail = |e: Error| raise(py, &e, false);
    let defaults = Geometry(
        window,
        step,
        vec![],
        0.1,
        "border".into(),
        0.125,
        allow_gaps,
    );
    let args = defaults.args().map_err(fail)?;
    let spatial = sizes("shape", &spatial).map_err(fail)?;
    let shape = [vec![1, 1], spatial].concat();
    let (_, grid) = tessera::ops::quilt::QuiltGeometry::new(&shape, &args).map_err(fail)?;
    Ok(grid.counts())
}

/// Runs a job in this process (one rank): `kind` is "path" (a TOML file), "toml" (its text)
/// or "json" (a dict of the file's tables, as JSON). Returns the report's path.
#[pyfunction]
#[pyo3(signature = (kind, job, resume, overwrite, dry_run, threads))]
fn run(
    py: Python<'_>,
    kind: &str,
    job: &str,
    resume: bool,
    overwrite: bool,
    dry_run: bool,
    threads: Option<i64>,
) -> PyResult<Option<String>> {
    let fail = |e: Error| raise(py, &e, true);
    let mut job = match kind {
        "path" => JobFile::load(Path::new(job)),
        "toml" => JobFile::parse(Path::new("<job>"), job),
        _ => json_job(job),
    }
    .map_err(fail)?;
    let options = job.run_options_mut();
    options.resume |= resume;
    options.overwrite |= overwrite;
    options.dry_run |= dry_run;
    let report = job
        .run_options()
        .report
        .clone()
        .unwrap_or_else(|| tessera::job::default_report(&job.output()));
    let threads = match threads {
        Some(n) if n < 1 => {
            return Err(fail(Error::parameter(
                "threads",
                format!("must be at least 1, got {n}"),
            )))
        }
        t => t.map(|n| n as usize),
    };
    py.detach(|| {
        let comm = tessera::comm::Local;
        // The pipeline's helper threads use rayon's global pool, built once per process: the
        // first run sets its width, as `--threads` does for the CLI.
        let plan = tessera::exec::threads::configure(threads, &comm)?;
        if let Some(n) = threads.filter(|&n| n != plan.threads) {
            return Err(Error::parameter(
                "threads",
                format!(
                    "this process's pool already has {} threads (rayon's global pool is built once, by the first run); asked for {n}: start a new process",
                    plan.threads
                ),
            ));
        }
        tessera::job::run_job(job, &comm)
    })
    .map_err(fail)?;
    Ok(report
        .exists()
        .then(|| report.to_string_lossy().into_owned()))
}

/// A job from a dict of a job file's tables (sent as JSON): the same reader as a TOML file,
/// relative paths taken from the working directory.
fn json_job(text: &str) -> tessera::Result<Job> {
    let config = |message: String| Error::Config {
        path: PathBuf::from("<dict>"),
        message,
    };
    let value: toml::Value = serde_json::from_str(text).map_err(|e| config(e.to_string()))?;
    let text = toml::to_string(&value).map_err(|e| config(e.to_string()))?;
    JobFile::parse(Path::new("<dict>"), &text)
}

/// The `tessera` command in this process: `argv` with the program name first; returns the
/// exit code.
#[pyfunction]
fn main(py: Python<'_>, argv: Vec<String>) -> i32 {
    py.detach(|| tessera::launch::run(argv))
}

/// The threads a call uses when not told (the CLI's default for one process).
/// One decoded exposure as (C, Y, X) uint8 or uint16 (grey or RGB; alpha dropped), by the
/// decoder `tessera hdr` uses.
#[pyfunction]
fn hdr_load<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyAny>> {
    let image = work(py, Some(1), || tessera::ops::hdr::load(&path))?;
    let shape = [image.channels, image.height, image.width];
    let fail = |e: ndarray::ShapeError| raise(py, &Error::bad_file(&path, e.to_string()), false);
    Ok(match image.pixels {
        tessera::ops::hdr::Pixels::U8(v) => {
            let a = ndarray::Array3::from_shape_vec(shape, v).map_err(fail)?;
            numpy::PyArray::from_owned_array(py, a).into_any()
        }
        tessera::ops::hdr::Pixels::U16(v) => {
            let a = ndarray::Array3::from_shape_vec(shape, v).map_err(fail)?;
            numpy::PyArray::from_owned_array(py, a).into_any()
        }
    })
}

/// A response file of `tessera hdr calibrate` (.npz) as (256, C) float64.
#[pyfunction]
fn hdr_read_response<'py>(
    py: Python<'py>,
    path: PathBuf,
) -> PyResult<Bound<'py, numpy::PyArray2<f64>>> {
    let g = work(py, Some(1), || tessera::ops::hdr::read_response(&path))?;
    Ok(numpy::PyArray2::from_owned_array(
        py,
        ndarray::Array2::from_shape_fn((256, g.len()), |(z, k)| g[k][z]),
    ))
}

/// Exposures (K, C, Y, X) as the library's decoded images.
fn hdr_images<T: Copy>(
    planes: &ArrayViewD<'_, T>,
    pixels: impl Fn(Vec<T>) -> tessera::ops::hdr::Pixels,
) -> tessera::Result<Vec<tessera::ops::hdr::Image>> {
    let [k, c, h, w] = planes.shape() else {
        return Err(Error::parameter(
            "bracket",
            format!(
                "expected (K, C, Y, X) exposures, got shape {:?}",
                planes.shape()
            ),
        ));
    };
    Ok((0..*k)
        .map(|j| tessera::ops::hdr::Image {
            channels: *c,
            height: *h,
            width: *w,
            pixels: pixels(
                planes
                    .index_axis(ndarray::Axis(0), j)
                    .iter()
                    .copied()
                    .collect(),
            ),
        })
        .collect())
}

/// Debevec merge of one bracket: exposures (K, C, Y, X) uint8, shortest first, their times
/// in seconds, the response (256, C) in the log domain. Returns (Y, X, C) float32 radiance and
/// how many (pixel, channel) values had no usable exposure.
#[pyfunction]
#[pyo3(signature = (planes, seconds, response, weight, threads))]
fn hdr_merge_debevec<'py>(
    py: Python<'py>,
    planes: numpy::PyReadonlyArrayDyn<'py, u8>,
    seconds: Vec<f64>,
    response: numpy::PyReadonlyArray2<'py, f64>,
    weight: &str,
    threads: Option<i64>,
) -> PyResult<(Bound<'py, PyArrayDyn<f32>>, u64)> {
    let fail = |e: Error| raise(py, &e, false);
    let kind = match weight {
        "triangle" => tessera::ops::hdr::debevec::WeightType::Triangle,
        "sine" => tessera::ops::hdr::debevec::WeightType::Sine,
        other => {
            return Err(fail(Error::parameter(
                "weight-type",
                format!("{other:?} is not triangle or sine"),
            )))
        }
    };
    let images = hdr_images(&planes.as_array(), tessera::ops::hdr::Pixels::U8).map_err(fail)?;
    let response = response.as_array();
    let c = images.first().map_or(0, |i| i.channels);
    if response.shape() != [256, c] {
        return Err(fail(Error::parameter(
            "response",
            format!(
                "shape {:?} where the bracket's {c} channel(s) need (256, {c})",
                response.shape()
            ),
        )));
    }
    let g: Vec<Vec<f64>> = (0..c).map(|k| response.column(k).to_vec()).collect();
    let ln_t: Vec<f64> = seconds.iter().map(|s| s.ln()).collect();
    let merged = work(py, threads, || {
        Ok(tessera::ops::hdr::merge_debevec(&images, &ln_t, &g, kind))
    })?;
    let out = merged_image(merged.height, merged.width, merged.channels, merged.data);
    Ok((numpy::PyArray::from_owned_array(py, out), merged.unusable))
}

/// A merged bracket's interleaved values as a (Y, X, C) array.
fn merged_image(height: usize, width: usize, channels: usize, data: Vec<f32>) -> ArrayD<f32> {
    ArrayD::from_shape_vec(vec![height, width, channels], data).expect("the merge's own shape")
}

/// Mertens fusion of one bracket: exposures (K, C, Y, X) uint8 or uint16. Returns (Y, X, C)
/// float32 display values.
#[pyfunction]
fn hdr_merge_mertens<'py>(
    py: Python<'py>,
    planes: &Bound<'py, PyAny>,
    threads: Option<i64>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let fail = |e: Error| raise(py, &e, false);
    let images = if let Ok(a) = planes.extract::<numpy::PyReadonlyArrayDyn<'py, u8>>() {
        hdr_images(&a.as_array(), tessera::ops::hdr::Pixels::U8)
    } else if let Ok(a) = planes.extract::<numpy::PyReadonlyArrayDyn<'py, u16>>() {
        hdr_images(&a.as_array(), tessera::ops::hdr::Pixels::U16)
    } else {
        return Err(PyTypeError::new_err(
            "bracket: expected uint8 or uint16 exposures",
        ));
    }
    .map_err(fail)?;
    let merged = work(py, threads, || {
        Ok(tessera::ops::hdr::merge_mertens(&images))
    })?;
    let out = merged_image(merged.height, merged.width, merged.channels, merged.data);
    Ok(numpy::PyArray::from_owned_array(py, out))
}

/// A refusal of clap's parser as the CLI's parameter error: the flag it names, its first line.
fn clap_error(e: &clap::Error) -> Error {
    let flag = e
        .get(clap::error::ContextKind::InvalidArg)
        .map(|a| a.to_string())
        .and_then(|a| {
            let name = a.trim_start_matches('-');
            name.split([' ', '=']).next().map(String::from)
        })
        .unwrap_or_else(|| "calibrate".into());
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    Error::parameter(flag, first.trim_start_matches("error: ").to_string())
}

/// The Debevec response (256, C) of brackets in memory, as `tessera hdr calibrate` computes it
/// from an archive of the same brackets in the same order. `brackets[i]`: exposures (K, C, Y,
/// X) uint8, shortest first; `seconds[i]`: their times; `flags`: `tessera hdr calibrate`'s
/// own flags (`--samples-per-image=500`...), parsed by the CLI's parser so that its defaults
/// and checks are the ones used.
#[pyfunction]
#[pyo3(signature = (brackets, seconds, flags, threads))]
fn hdr_calibrate<'py>(
    py: Python<'py>,
    brackets: Vec<numpy::PyReadonlyArrayDyn<'py, u8>>,
    seconds: Vec<Vec<f64>>,
    flags: Vec<String>,
    threads: Option<i64>,
) -> PyResult<Bound<'py, numpy::PyArray2<f64>>> {
    use clap::{Args, FromArgMatches};
    let fail = |e: Error| raise(py, &e, false);
    let args = ["calibrate", "--input=in-memory", "--response=in-memory.npz"]
        .into_iter()
        .map(String::from)
        .chain(flags);
    let matches = tessera::ops::hdr::CalibrateJob::augment_args(clap::Command::new("calibrate"))
        .try_get_matches_from(args)
        .map_err(|e| fail(clap_error(&e)))?;
    let job = tessera::ops::hdr::CalibrateJob::from_arg_matches(&matches)
        .map_err(|e| fail(Error::parameter("calibrate", e.to_string())))?;
    let decoded: Vec<(Vec<tessera::ops::hdr::Image>, Vec<f64>)> = brackets
        .iter()
        .zip(&seconds)
        .map(|(b, s)| {
            let images = hdr_images(&b.as_array(), tessera::ops::hdr::Pixels::U8)?;
            Ok((images, s.iter().map(|t| t.ln()).collect()))
        })
        .collect::<tessera::Result<_>>()
        .map_err(fail)?;
    let g = work(py, threads, || {
        tessera::ops::hdr::calibrate_images(&job, &decoded)
    })?;
    Ok(numpy::PyArray2::from_owned_array(
        py,
        ndarray::Array2::from_shape_fn((256, g.len()), |(z, k)| g[k][z]),
    ))
}

#[pyfunction(name = "default_threads")]
fn py_default_threads() -> usize {
    default_threads()
}

#[pymodule]
fn _tessera(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("cuda", cfg!(feature = "cuda"))?;
    // Every function of the module, each added as Python calls it.
    macro_rules! add_functions {
        ($($f:path),* $(,)?) => { $(m.add_function(wrap_pyfunction!($f, m)?)?;)* };
    }
    add_functions![
        unstitch,
        stitch,
        border_mask,
        window_weights,
        window_counts,
        run,
        main,
        py_default_threads,
        hdr_load,
        hdr_read_response,
        hdr_merge_debevec,
        hdr_merge_mertens,
        hdr_calibrate,
        logging::set_log_level,
    ];
    Ok(())
}
