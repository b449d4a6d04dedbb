//! Array addresses: one string names any input or output array.
//!
//! `file.npy`; `store.zarr` (array at the store root) or `store.zarr/group/array`;
//! `file.h5:/group/dataset` (also `.hdf5`, `.hdf`, `.he5`, `.nxs`, `.emd`); `file.pt` (also
//! `.pth`) or `file.pt:key` for a tensor in a dict or list saved by `torch.save`.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const HDF5_EXTENSIONS: [&str; 6] = ["h5", "hdf5", "hdf", "he5", "nxs", "emd"];
const PT_EXTENSIONS: [&str; 2] = ["pt", "pth"];

/// Where an array lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// A numpy `.npy` file.
    Npy { path: PathBuf },
    /// A PyTorch `.pt` file: the tensor it holds, or the one at `key` of its dict or list.
    Pt { path: PathBuf, key: Option<String> },
    /// An array in a Zarr store directory; `node` is `""` for the root, else `group/array`.
    Zarr { store: PathBuf, node: String },
    /// A dataset in an HDF5 file; `dataset` starts with `/`.
    Hdf5 { file: PathBuf, dataset: String },
    /// A directory of patch files with `patch_manifest.csv` and `patch_meta.json`, as
    /// `tessera patches` writes it (the CT notebook's layout). Never parsed from text: the
    /// patches command names its output directory this way so that it is staged, locked,
    /// journaled and published like an array.
    PatchDir { dir: PathBuf },
}

impl Address {
    /// Whether tessera's writer for this format takes writes from several threads at once of
    /// boxes that share no write block (chunk or shard): the promise ranks already rely on when
    /// they write one output in parallel. Zarr (each block encoded and stored on its own),
    /// `.npy` and `.pt` (positioned writes of a box's own bytes) do; HDF5 (collective or
    /// serialised writes) and patch directories do not.
    pub fn takes_concurrent_writes(&self) -> bool {
        matches!(
            self,
            Address::Npy { .. } | Address::Pt { .. } | Address::Zarr { .. }
        )
    }

    /// Parses an address string.
    ///
    /// # Errors
    /// [`Error::Address`] when the string names no format tessera knows.
    pub fn parse(text: &str) -> Result<Address> {
        let bad = |message: &str| Error::address(text, message);
        if text.is_empty() {
            return Err(bad("empty array address"));
        }
        // HDF5: `file.ext:/dataset` (the dataset part may lack the leading slash).
        if let Some((file, dataset)) = text.rsplit_once(':') {
            if has_extension(Path::new(file), &HDF5_EXTENSIONS) {
                let dataset = dataset.trim_matches('/');
                if dataset.is_empty() {
                    return Err(bad(
                        "no dataset after ':' (expected file.h5:/group/dataset)",
                    ));
                }
                return Ok(Address::Hdf5 {
                    file: PathBuf::from(file),
                    dataset: format!("/{dataset}"),
                });
            }
        }
        // PyTorch: `file.pt` or `file.pt:key` (the first ':' after which a .pt name ends).
        for (i, _) in text.match_indices(':') {
            let (file, key) = (&text[..i], &text[i + 1..]);
            if has_extension(Path::new(file), &PT_EXTENSIONS) {
                if key.is_empty() {
                    return Err(bad("no key after ':' (expected file.pt:key)"));
                }
                return Ok(Address::Pt {
                    path: PathBuf::from(file),
                    key: Some(key.to_string()),
                });
            }
        }
        let path = Path::new(text);
        if has_extension(path, &PT_EXTENSIONS) {
            return Ok(Address::Pt {
                path: path.to_path_buf(),
                key: None,
            });
        }
        if has_extension(path, &HDF5_EXTENSIONS) {
            return Err(bad(
                "an HDF5 address names its dataset: file.h5:/group/dataset",
            ));
        }
        if has_extension(path, &["npy"]) {
            return Ok(Address::Npy {
                path: path.to_path_buf(),
            });
        }
        // Zarr: the last component ending in `.zarr` is the store; the rest is the node path.
        let components: Vec<_> = path.components().collect();
        if let Some(i) = components
            .iter()
            .rposition(|c| c.as_os_str().to_string_lossy().ends_with(".zarr"))
        {
            let store: PathBuf = components[..=i].iter().collect();
            let node: Vec<String> = components[i + 1..]
                .iter()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            return Ok(Address::Zarr {
                store,
                node: node.join("/"),
            });
        }
        // A directory without the `.zarr` suffix that holds Zarr metadata is a store too.
        if path.join("zarr.json").is_file() || path.join(".zarray").is_file() {
            return Ok(Address::Zarr {
                store: path.to_path_buf(),
                node: String::new(),
            });
        }
        Err(bad(
            "cannot tell the format: expected file.npy, file.pt[:key], store.zarr[/group/array] or file.h5:/dataset",
        ))
    }

    /// The file or directory that holds the whole container (npy file, store dir, HDF5 file).
    pub fn container(&self) -> &Path {
        match self {
            Address::Npy { path } | Address::Pt { path, .. } => path,
            Address::Zarr { store, .. } => store,
            Address::Hdf5 { file, .. } => file,
            Address::PatchDir { dir } => dir,
        }
    }

    /// The same address in another container (used to stage outputs under a temporary name).
    pub fn with_container(&self, container: PathBuf) -> Address {
        match self {
            Address::Npy { .. } => Address::Npy { path: container },
            Address::Pt { key, .. } => Address::Pt {
                path: container,
                key: key.clone(),
            },
            Address::Zarr { node, .. } => Address::Zarr {
                store: container,
                node: node.clone(),
            },
            Address::Hdf5 { dataset, .. } => Address::Hdf5 {
                file: container,
                dataset: dataset.clone(),
            },
            Address::PatchDir { .. } => Address::PatchDir { dir: container },
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Address::Npy { .. } => "npy",
            Address::Pt { .. } => "pt",
            Address::Zarr { .. } => "zarr",
            Address::Hdf5 { .. } => "hdf5",
            Address::PatchDir { .. } => "patch directory",
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Npy { path } | Address::Pt { path, key: None } => {
                write!(f, "{}", path.display())
            }
            Address::Pt {
                path,
                key: Some(key),
            } => write!(f, "{}:{key}", path.display()),
            Address::Zarr { store, node } if node.is_empty() => write!(f, "{}", store.display()),
            Address::Zarr { store, node } => write!(f, "{}/{node}", store.display()),
            Address::Hdf5 { file, dataset } => write!(f, "{}:{dataset}", file.display()),
            Address::PatchDir { dir } => write!(f, "{}", dir.display()),
        }
    }
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| extensions.contains(&e.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind() {
        assert_eq!(
            Address::parse("a/b.npy").unwrap(),
            Address::Npy {
                path: "a/b.npy".into()
            }
        );
        assert_eq!(
            Address::parse("d/s.zarr").unwrap(),
            Address::Zarr {
                store: "d/s.zarr".into(),
                node: String::new()
            }
        );
        assert_eq!(
            Address::parse("d/s.zarr/g/a").unwrap(),
            Address::Zarr {
                store: "d/s.zarr".into(),
                node: "g/a".into()
            }
        );
        assert_eq!(
            Address::parse("f.h5:/g/d").unwrap(),
            Address::Hdf5 {
                file: "f.h5".into(),
                dataset: "/g/d".into()
            }
        );
        assert_eq!(
            Address::parse("x/f.emd:data").unwrap().to_string(),
            "x/f.emd:/data"
        );
        assert_eq!(
            Address::parse("d/p.pt").unwrap(),
            Address::Pt {
                path: "d/p.pt".into(),
                key: None
            }
        );
        for (text, path, key) in [
            ("d/p.pt:weights", "d/p.pt", "weights"),
            ("m.pth:layer.0:w", "m.pth", "layer.0:w"),
            ("a:b/p.pt:0", "a:b/p.pt", "0"),
        ] {
            let a = Address::parse(text).unwrap();
            assert_eq!(
                a,
                Address::Pt {
                    path: path.into(),
                    key: Some(key.into())
                }
            );
            assert_eq!(a.to_string(), text);
        }
    }

    #[test]
    fn refuses_what_it_cannot_place() {
        assert!(Address::parse("f.h5")
            .unwrap_err()
            .to_string()
            .contains("dataset"));
        assert!(Address::parse("f.h5:/").is_err());
        assert!(Address::parse("f.pt:")
            .unwrap_err()
            .to_string()
            .contains("key"));
        assert!(Address::parse("").is_err());
        assert!(Address::parse("/no/such/thing.dat")
            .unwrap_err()
            .to_string()
            .contains("cannot tell"));
    }
}
