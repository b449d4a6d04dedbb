//! HDF5 datasets through `hdf5-metno`, with boxes moved by raw hyperslab reads and writes
//! (`hdf5-sys`) so that under MPI the same code path writes collectively through MPI-IO.
//!
//! Parallel HDF5 requires that every rank take part in every metadata change (file, dataset
//! and attribute creation) with the same values, and in every collective write; `ArrayWriter`'s
//! contract (all ranks call each method, `None` for nothing to write) provides exactly that.

use std::path::{Path, PathBuf};

use hdf5::types::{TypeDescriptor, VarLenUnicode};
use hdf5::{Dataset, File, H5Type};
use hdf5_sys::h5::hsize_t;
use hdf5_sys::h5i::hid_t;
use ndarray::{ArrayD, IxDyn};
use serde_json::{Map, Value};

use super::{
    check_read, check_write, ArrayMeta, ArrayReader, ArrayWriter, Block, Codec, CreateSpec, DType,
    Element,
};
use crate::comm::Comm;
use crate::error::{Error, Result};
use crate::grid::Region;
use crate::{with_block, with_dtype};

fn h5_err(file: &Path, e: impl std::fmt::Display) -> Error {
    Error::Hdf5 {
        file: file.display().to_string(),
        message: e.to_string(),
    }
}

fn dtype_of(path: &Path, ds: &Dataset) -> Result<DType> {
    use hdf5::types::{FloatSize, IntSize};
    let desc = ds
        .dtype()
        .and_then(|t| t.to_descriptor())
        .map_err(|e| h5_err(path, e))?;
    Ok(match desc {
        TypeDescriptor::Unsigned(IntSize::U1) => DType::U8,
        TypeDescriptor::Unsigned(IntSize::U2) => DType::U16,
        TypeDescriptor::Unsigned(IntSize::U4) => DType::U32,
        TypeDescriptor::Unsigned(IntSize::U8) => DType::U64,
        TypeDescriptor::Integer(IntSize::U1) => DType::I8,
        TypeDescriptor::Integer(IntSize::U2) => DType::I16,
        TypeDescriptor::Integer(IntSize::U4) => DType::I32,
        TypeDescriptor::Integer(IntSize::U8) => DType::I64,
        TypeDescriptor::Float(FloatSize::U4) => DType::F32,
        TypeDescriptor::Float(FloatSize::U8) => DType::F64,
        other => {
            return Err(Error::bad_file(
                path,
                format!("dataset type {other} is not supported (u8..u64, i8..i64, f32, f64)"),
            ))
        }
    })
}

fn read_attributes(ds: &Dataset) -> Map<String, Value> {
    let mut out = Map::new();
    for name in ds.attr_names().unwrap_or_default() {
        let Ok(attr) = ds.attr(&name) else { continue };
        let value = if let Ok(s) = attr.read_scalar::<VarLenUnicode>() {
            let s = s.as_str().to_string();
            // Non-string values are stored as JSON text (see `write_attribute`).
            if s.starts_with('[') || s.starts_with('{') {
                serde_json::from_str(&s).unwrap_or(Value::String(s))
            } else {
                Value::String(s)
            }
        } else if let Ok(i) = attr.read_scalar::<i64>() {
            Value::from(i)
        } else if let Ok(f) = attr.read_scalar::<f64>() {
            Value::from(f)
        } else {
            Value::String("<unsupported attribute type>".into())
        };
        out.insert(name, value);
    }
    out
}

/// Writes one attribute: strings as UTF-8 strings, integers and floats as scalars, booleans
/// as 0/1, arrays and objects as JSON text (h5py users read them with `json.loads`).
fn write_attribute(ds: &Dataset, name: &str, value: &Value) -> hdf5::Result<()> {
    if ds.attr(name).is_ok() {
        ds.delete_attr(name)?;
    }
    match value {
        Value::Number(n) if n.is_i64() => ds
            .new_attr::<i64>()
            .create(name)?
            .write_scalar(&n.as_i64().unwrap_or(0)),
        Value::Number(n) if n.is_u64() => ds
            .new_attr::<u64>()
            .create(name)?
            .write_scalar(&n.as_u64().unwrap_or(0)),
        Value::Number(n) => ds
            .new_attr::<f64>()
            .create(name)?
            .write_scalar(&n.as_f64().unwrap_or(f64::NAN)),
        Value::Bool(b) => ds
            .new_attr::<u8>()
            .create(name)?
            .write_scalar(&u8::from(*b)),
        other => {
            let text = match other {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            let text: VarLenUnicode = text
                .parse()
                .map_err(|e: hdf5::types::StringError| hdf5::Error::from(e.to_string().as_str()))?;
            ds.new_attr::<VarLenUnicode>()
                .create(name)?
                .write_scalar(&text)
        }
    }
}

/// Selects `region` in the dataset's file space and builds a matching memory space; with no
/// region, selects nothing in both (a rank taking part in a collective call with no data).
///
/// # Safety
/// `ds` must be a valid open dataset id; the returned ids must be closed by the caller.
unsafe fn spaces(
    ds: hid_t,
    region: Option<&Region>,
) -> std::result::Result<(hid_t, hid_t), String> {
    use hdf5_sys::h5s::*;
    let file_space = hdf5_sys::h5d::H5Dget_space(ds);
    if file_space < 0 {
        return Err("cannot get the dataset's dataspace".into());
    }
    match region {
        Some(region) => {
            let start: Vec<hsize_t> = region.start.clone();
            let count: Vec<hsize_t> = region.shape.clone();
            if H5Sselect_hyperslab(
                file_space,
                H5S_seloper_t::H5S_SELECT_SET,
                start.as_ptr(),
                std::ptr::null(),
                count.as_ptr(),
                std::ptr::null(),
            ) < 0
            {
                H5Sclose(file_space);
                return Err(format!(
                    "cannot select box {:?}+{:?}",
                    region.start, region.shape
                ));
            }
            let mem_space = H5Screate_simple(count.len() as i32, count.as_ptr(), std::ptr::null());
            Ok((file_space, mem_space))
        }
        None => {
            H5Sselect_none(file_space);
            let mem_space = H5Scopy(file_space);
            H5Sselect_none(mem_space);
            Ok((file_space, mem_space))
        }
    }
}

/// A dataset-transfer property list: collective MPI-IO when `collective`, else the default.
unsafe fn transfer_plist(collective: bool) -> hid_t {
    use hdf5_sys::h5p::*;
    if !collective {
        return hdf5_sys::h5p::H5P_DEFAULT;
    }
    let dxpl = H5Pcreate(*H5P_CLS_DATASET_XFER);
    #[cfg(feature = "mpi")]
    H5Pset_dxpl_mpio(dxpl, H5FD_mpio_xfer_t::H5FD_MPIO_COLLECTIVE);
    dxpl
}

/// The filters of a dataset's pipeline that this HDF5 library cannot apply, described as
/// "HDF5 filter <id> (<name>)": hdf5-metno reports such a filter only as `user(id, ...)` and
/// the failed read as a bare H5Dread error, which leaves the user guessing.
///
/// # Safety
/// `dataset` is a live dataset id; call under `hdf5::sync::sync`.
unsafe fn unavailable_filters(dataset: hid_t) -> Vec<String> {
    use hdf5_sys::h5p::{H5Pclose, H5Pget_filter2, H5Pget_nfilters};
    let dcpl = hdf5_sys::h5d::H5Dget_create_plist(dataset);
    if dcpl < 0 {
        return Vec::new();
    }
    let mut missing = Vec::new();
    for index in 0..H5Pget_nfilters(dcpl).max(0) as u32 {
        let (mut flags, mut nelmts, mut config) = (0, 0, 0);
        let mut name = [0 as std::ffi::c_char; 256];
        let id = H5Pget_filter2(
            dcpl,
            index,
            &mut flags,
            &mut nelmts,
            std::ptr::null_mut(),
            name.len(),
            name.as_mut_ptr(),
            &mut config,
        );
        if id >= 0 && hdf5_sys::h5z::H5Zfilter_avail(id) <= 0 {
            let name = std::ffi::CStr::from_ptr(name.as_ptr()).to_string_lossy();
            missing.push(if name.is_empty() {
                format!("HDF5 filter {id}")
            } else {
                format!("HDF5 filter {id} ({name})")
            });
        }
    }
    H5Pclose(dcpl);
    missing
}

/// The external raw files (`H5Pset_external`) of `dataset` that do not exist, relative to the
/// working directory (where HDF5 1.10 looks) nor to the HDF5 file's directory.
///
/// # Safety
/// `dataset` must be a live dataset id; call inside `hdf5::sync::sync`.
unsafe fn missing_external_files(file: &Path, dataset: hid_t) -> Vec<String> {
    use hdf5_sys::h5p::{H5Pclose, H5Pget_external, H5Pget_external_count};
    let dcpl = hdf5_sys::h5d::H5Dget_create_plist(dataset);
    if dcpl < 0 {
        return Vec::new();
    }
    let mut missing = Vec::new();
    for index in 0..H5Pget_external_count(dcpl).max(0) as u32 {
        let mut name = [0 as std::ffi::c_char; 4096];
        let (mut offset, mut size) = (0, 0);
        if H5Pget_external(
            dcpl,
            index,
            name.len(),
            name.as_mut_ptr(),
            &mut offset,
            &mut size,
        ) < 0
        {
            continue;
        }
        let name = std::ffi::CStr::from_ptr(name.as_ptr())
            .to_string_lossy()
            .into_owned();
        let beside = file.parent().unwrap_or(Path::new("")).join(&name);
        if !Path::new(&name).is_file() && !beside.is_file() {
            missing.push(name);
        }
    }
    H5Pclose(dcpl);
    missing
}

fn read_raw<T: H5Type + Element>(path: &Path, ds: &Dataset, region: &Region) -> Result<ArrayD<T>> {
    let mut out = ArrayD::<T>::default(IxDyn(&region.shape_usize()));
    let mem_type = hdf5::Datatype::from_type::<T>().map_err(|e| h5_err(path, e))?;
    let status = hdf5::sync::sync(|| unsafe {
        // SAFETY: ids come from live hdf5-metno objects; the buffer holds exactly the selected
        // number of elements of the memory type; every id we open is closed before returning.
        let (file_space, mem_space) = spaces(ds.id(), Some(region))?;
        let r = hdf5_sys::h5d::H5Dread(
            ds.id(),
            mem_type.id(),
            mem_space,
            file_space,
            hdf5_sys::h5p::H5P_DEFAULT,
            out.as_mut_ptr().cast(),
        );
        hdf5_sys::h5s::H5Sclose(mem_space);
        hdf5_sys::h5s::H5Sclose(file_space);
        if r < 0 {
            Err(match unavailable_filters(ds.id()).first() {
                Some(filter) => format!(
                    "dataset {} cannot be read: it is compressed with {filter}, which this HDF5 library does not have (not built in, and no plugin for it in HDF5_PLUGIN_PATH)",
                    ds.name()
                ),
                None => "H5Dread failed (truncated or corrupt file?)".to_string(),
            })
        } else {
            Ok(())
        }
    });
    status.map_err(|m| h5_err(path, m))?;
    Ok(out)
}

/// Reads an HDF5 dataset.
pub struct Hdf5Reader {
    _file: File,
    ds: Dataset,
    meta: ArrayMeta,
    path: PathBuf,
}

impl Hdf5Reader {
    /// # Errors
    /// Not an HDF5 file, no such dataset (or a group there), or an unsupported type.
    pub fn open(path: &Path, dataset: &str) -> Result<Self> {
        let file = File::open(path)
            .map_err(|e| Error::bad_file(path, format!("cannot open as HDF5: {e}")))?;
        let shown = format!("{}:{dataset}", path.display());
        if file.group(dataset).is_ok() {
            let members = file
                .group(dataset)
                .and_then(|g| g.member_names())
                .unwrap_or_default();
            return Err(Error::address(
                shown,
                format!(
                    "is an HDF5 group, not a dataset (its members: {})",
                    members.join(", ")
                ),
            ));
        }
        let ds = file
            .dataset(dataset)
            .map_err(|_| Error::address(&shown, "no such dataset"))?;
        // SAFETY: a live dataset id, inside HDF5's lock.
        let missing = hdf5::sync::sync(|| unsafe { missing_external_files(path, ds.id()) });
        if !missing.is_empty() {
            return Err(Error::address(
                shown,
                format!(
                    "keeps its data in external raw file(s) that do not exist: {} (looked for relative to the working directory and to the HDF5 file's directory)",
                    missing.join(", ")
                ),
            ));
        }
        let dtype = dtype_of(path, &ds)?;
        let codecs = ds
            .filters()
            .iter()
            .map(|f| format!("{f:?}").to_lowercase())
            .collect();
        let shape = ds.shape().iter().map(|&n| n as u64).collect();
        let meta = ArrayMeta {
            chunks: ds.chunk().map(|c| c.iter().map(|&n| n as u64).collect()),
            codecs,
            attributes: read_attributes(&ds),
            ..ArrayMeta::contiguous(shape, dtype)
        };
        Ok(Hdf5Reader {
            _file: file,
            ds,
            meta,
            path: path.to_path_buf(),
        })
    }
}

impl ArrayReader for Hdf5Reader {
    fn meta(&self) -> &ArrayMeta {
        &self.meta
    }

    /// HDF5 reads into memory of its own: `spare` is not used.
    fn read_box_reusing(&self, region: &Region, _spare: Option<Block>) -> Result<Block> {
        check_read(&self.path, &self.meta.shape, region)?;
        with_dtype!(self.meta.dtype, T => Ok(T::into_block(read_raw::<T>(&self.path, &self.ds, region)?)))
    }
}

/// Writes an HDF5 dataset, in parallel through MPI-IO when the job has several ranks.
pub struct Hdf5Writer {
    file: File,
    ds: Dataset,
    shape: Vec<u64>,
    dtype: DType,
    path: PathBuf,
    collective: bool,
}

fn open_file(path: &Path, comm: &dyn Comm, create: bool) -> hdf5::Result<File> {
    let mut builder = File::with_options();
    #[cfg(feature = "mpi")]
    if let Some(raw) = comm.mpi_raw().filter(|_| comm.size() > 1) {
        builder.with_fapl(|p| p.mpio(raw, None));
    }
    #[cfg(not(feature = "mpi"))]
    let _ = comm;
    if create {
        builder.create(path)
    } else {
        builder.open_rw(path)
    }
}

impl Hdf5Writer {
    /// Creates the file and dataset (collectively under MPI), or reopens them to resume.
    ///
    /// # Errors
    /// Shards or a codec HDF5 readers cannot decode without plugins; HDF5 failures.
    pub fn create(
        path: &Path,
        dataset: &str,
        spec: &CreateSpec,
        comm: &dyn Comm,
        resume: bool,
    ) -> Result<Self> {
        if spec.shards.is_some() {
            return Err(Error::parameter(
                "shards",
                "sharding is a Zarr feature; HDF5 output takes --chunks only",
            ));
        }
        if comm.is_root() {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| Error::Io {
                    path: parent.into(),
                    source: e,
                })?;
            }
        }
        // Looked at before the barrier, so that no rank sees the file a collective create
        // is making. An existing file is opened, never truncated: staging (`io::staging`)
        // writes either a new file (`out.h5.partial`) or a new dataset inside an existing one.
        let existed = path.exists();
        comm.barrier();
        let reopen = resume && existed;
        let file = open_file(path, comm, !existed).map_err(|e| {
            if reopen {
                h5_err(path, format!("cannot reopen the interrupted output to resume ({e}); start over with --overwrite"))
            } else {
                h5_err(path, e)
            }
        })?;
        let ds = if reopen {
            file.dataset(dataset).map_err(|e| h5_err(path, e))?
        } else {
            // Intermediate groups, then the dataset; all ranks do this together.
            let parts: Vec<&str> = dataset.split('/').filter(|p| !p.is_empty()).collect();
            let mut group = file.as_group().map_err(|e| h5_err(path, e))?;
            for part in &parts[..parts.len() - 1] {
                group = match group.group(part) {
                    Ok(g) => g,
                    Err(_) => group.create_group(part).map_err(|e| h5_err(path, e))?,
                };
            }
            let shape: Vec<usize> = spec.shape.iter().map(|&n| n as usize).collect();
            let chunks: Vec<usize> = spec
                .chunks
                .iter()
                .zip(&shape)
                .map(|(&c, &d)| (c as usize).min(d.max(1)))
                .collect();
            let name = parts[parts.len() - 1];
            let built = with_dtype!(spec.dtype, T => {
                let mut b = group.new_dataset::<T>().shape(shape.clone()).chunk(chunks.clone());
                if spec.codec == Codec::Gzip {
                    b = b.deflate(5);
                }
                b.create(name)
            });
            built.map_err(|e| h5_err(path, e))?
        };
        let writer = Hdf5Writer {
            file,
            ds,
            shape: spec.shape.clone(),
            dtype: spec.dtype,
            path: path.to_path_buf(),
            collective: comm.size() > 1,
        };
        if !reopen {
            writer.set_attributes(&spec.attributes)?;
        }
        Ok(writer)
    }
}

fn write_raw<T: H5Type + Clone>(
    path: &Path,
    ds: &Dataset,
    part: Option<(&Region, &ArrayD<T>)>,
    collective: bool,
) -> Result<()> {
    let mem_type = hdf5::Datatype::from_type::<T>().map_err(|e| h5_err(path, e))?;
    let contiguous;
    let (region, ptr) = match part {
        Some((region, a)) => {
            contiguous = a.as_standard_layout();
            (Some(region), contiguous.as_ptr())
        }
        None => (
            None,
            std::ptr::NonNull::<T>::dangling().as_ptr().cast_const(),
        ),
    };
    let status = hdf5::sync::sync(|| unsafe {
        // SAFETY: ids come from live hdf5-metno objects; the buffer is a C-order array of the
        // selected shape (or nothing is selected and the pointer is never read).
        let (file_space, mem_space) = spaces(ds.id(), region)?;
        let dxpl = transfer_plist(collective);
        let r = hdf5_sys::h5d::H5Dwrite(
            ds.id(),
            mem_type.id(),
            mem_space,
            file_space,
            dxpl,
            ptr.cast(),
        );
        if collective {
            hdf5_sys::h5p::H5Pclose(dxpl);
        }
        hdf5_sys::h5s::H5Sclose(mem_space);
        hdf5_sys::h5s::H5Sclose(file_space);
        if r < 0 {
            Err("H5Dwrite failed".to_string())
        } else {
            Ok(())
        }
    });
    status.map_err(|m| h5_err(path, m))
}

impl ArrayWriter for Hdf5Writer {
    fn write_box(&self, part: Option<(&Region, &Block)>) -> Result<()> {
        self.write_unflushed(part)?;
        // HDF5 keeps metadata (and small raw data) in its own caches: without a flush, a
        // killed run leaves a file that cannot be reopened, although its journal says the
        // unit is written. Flushed, the bytes are in the OS's hands, as the journal requires.
        // Collective under MPI, like the write.
        self.file.flush().map_err(|e| h5_err(&self.path, e))
    }

    fn set_attributes(&self, attributes: &Map<String, Value>) -> Result<()> {
        for (name, value) in attributes {
            write_attribute(&self.ds, name, value)
                .map_err(|e| h5_err(&self.path, format!("attribute {name}: {e}")))?;
        }
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        let Hdf5Writer { file, ds, path, .. } = *self;
        drop(ds);
        file.flush().map_err(|e| h5_err(&path, e))?;
        file.close().map_err(|e| h5_err(&path, e))
    }
}

impl Hdf5Writer {
    fn write_unflushed(&self, part: Option<(&Region, &Block)>) -> Result<()> {
        match part {
            Some((region, block)) => {
                check_write(&self.path, &self.shape, self.dtype, region, block)?;
                with_block!(block, a => write_raw(&self.path, &self.ds, Some((region, a)), self.collective))
            }
            None => {
                with_dtype!(self.dtype, T => write_raw::<T>(&self.path, &self.ds, None, self.collective))
            }
        }
    }
}

/// Datasets added to an existing file (`io::staging`): the new dataset is written into a
/// staging file of its own (`f.h5.<dataset>.partial`), so that a crash while writing can never
/// corrupt the user's file, and copied into the file when complete (`H5Ocopy`, which moves
/// the stored chunks as they are). The user's file is open for writing only during that copy.
/// Serial: rank 0, while no rank has either file open.
pub mod links {
    use std::ffi::CString;
    use std::path::Path;

    use super::h5_err;
    use crate::error::{Error, Result};

    fn open(file: &Path, write: bool) -> Result<hdf5::File> {
        let opened = if write {
            hdf5::File::open_rw(file)
        } else {
            hdf5::File::open(file)
        };
        opened.map_err(|e| {
            Error::bad_file(
                file,
                format!("exists and cannot be opened as HDF5 ({e}); tessera adds datasets only to HDF5 files"),
            )
        })
    }

    /// Whether `path` names a link (dataset or group) in `file`.
    ///
    /// # Errors
    /// The file is not HDF5.
    pub fn exists(file: &Path, path: &str) -> Result<bool> {
        let f = open(file, false)?;
        Ok(has(&f, path))
    }

    fn has(f: &hdf5::File, path: &str) -> bool {
        // H5Lexists wants every intermediate group to exist: check them one by one.
        let mut prefix = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            prefix.push('/');
            prefix.push_str(part);
            if !f.link_exists(&prefix) {
                return false;
            }
        }
        !prefix.is_empty()
    }

    /// Copies `dataset` of `staged` into `file` under the same path, replacing what is there:
    /// the old dataset is first moved aside (`<dataset>.replaced`), then the copy takes its
    /// name, then the old one is unlinked, so at every moment one complete dataset is
    /// reachable. (HDF5 does not reuse the old dataset's space; `h5repack` reclaims it.)
    ///
    /// # Errors
    /// HDF5 failures.
    pub fn copy_in(staged: &Path, file: &Path, dataset: &str) -> Result<()> {
        let source = open(staged, false)?;
        let target = open(file, true)?;
        let fail = |what: &str, e: hdf5::Error| h5_err(file, format!("{what}: {e}"));
        let aside = format!("{dataset}.replaced");
        let replacing = has(&target, dataset);
        if replacing {
            if has(&target, &aside) {
                target
                    .unlink(&aside)
                    .map_err(|e| fail(&format!("removing {aside}"), e))?;
            }
            target
                .relink(dataset, &aside)
                .map_err(|e| fail(&format!("moving the old {dataset} aside"), e))?;
        }
        let name = CString::new(dataset).map_err(|e| h5_err(file, e))?;
        let status = hdf5::sync::sync(|| unsafe {
            use hdf5_sys::h5p::{H5Pclose, H5Pcreate, H5Pset_create_intermediate_group};
            // SAFETY: both files are open for the whole call; the property list is created
            // and closed here; the names are NUL-terminated.
            let lcpl = H5Pcreate(*hdf5_sys::h5p::H5P_CLS_LINK_CREATE);
            H5Pset_create_intermediate_group(lcpl, 1);
            let r = hdf5_sys::h5o::H5Ocopy(
                source.id(),
                name.as_ptr(),
                target.id(),
                name.as_ptr(),
                hdf5_sys::h5p::H5P_DEFAULT,
                lcpl,
            );
            H5Pclose(lcpl);
            r
        });
        if status < 0 {
            return Err(h5_err(
                file,
                format!("copying {dataset} in from {}", staged.display()),
            ));
        }
        if replacing {
            target
                .unlink(&aside)
                .map_err(|e| fail(&format!("removing {aside}"), e))?;
        }
        target.flush().map_err(|e| fail("flushing", e))
    }
}
