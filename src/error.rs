//! The one error type of the library. Every variant names what was wrong and where (file,
//! dataset, parameter), with the expected and found values where there are any, so that the
//! binary can print a single line that a user can act on.

use std::path::PathBuf;

/// Every fallible function in tessera returns this.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command-line or config parameter has a value that cannot be used.
    #[error("--{name}: {message}")]
    Parameter { name: String, message: String },

    /// An array address that cannot be parsed or does not point at an array.
    #[error("{address}: {message}")]
    Address { address: String, message: String },

    /// A file exists but its contents are not what they should be.
    #[error("{}: {message}", path.display())]
    BadFile { path: PathBuf, message: String },

    /// Filesystem error with the path it happened on.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The output exists and the user did not ask to replace it.
    #[error("{}: {message}", path.display())]
    OutputExists { path: PathBuf, message: String },

    /// Two arrays (or slices) that must agree do not.
    #[error("{what}: expected {expected}, found {found}")]
    Mismatch {
        what: String,
        expected: String,
        found: String,
    },

    /// A value cannot be represented in the requested data type.
    #[error("{what}: value {value} does not fit in {dtype}")]
    Conversion {
        what: String,
        value: String,
        dtype: String,
    },

    /// A feature the binary was built without.
    #[error("{what} needs a tessera built with feature \"{feature}\"")]
    NotCompiled { what: String, feature: &'static str },

    /// Errors from the Zarr library, with the store they came from.
    #[error("{store}: {message}")]
    Zarr { store: String, message: String },

    /// Errors from the HDF5 library, with the file they came from.
    #[error("{file}: HDF5: {message}")]
    Hdf5 { file: String, message: String },

    /// An input changed while the run read it, or another job is writing it
    /// (`io::watch`): the output is not published.
    #[error("{input}: {message}")]
    InputChanged { input: String, message: String },

    /// Another rank failed; this rank stopped so that all ranks exit together.
    #[error("stopped because rank {rank} failed")]
    PeerFailed { rank: usize },

    /// A plan needs more memory than this process can have (`exec::memory::check`); `what`
    /// names the flags the size comes from.
    #[error("needs {} for {what}, {} available", crate::units::human_bytes(*needed), crate::units::human_bytes(*available))]
    Memory {
        what: String,
        needed: u64,
        available: u64,
    },

    /// A GPU that was asked for cannot be used, or failed (driver, NVRTC, launch, memory).
    #[error("GPU: {message}")]
    Gpu { message: String },

    /// A config (TOML) file that cannot be read as a job.
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
}

/// Shorthand used everywhere in the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// [`Error::NotCompiled`] for `what`, a CUDA path of a build without the `cuda` feature.
    pub fn without_cuda(what: impl Into<String>) -> Self {
        Error::NotCompiled {
            what: what.into(),
            feature: "cuda",
        }
    }

    pub fn gpu(message: impl Into<String>) -> Self {
        Error::Gpu {
            message: message.into(),
        }
    }

    pub fn parameter(name: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Parameter {
            name: name.into(),
            message: message.into(),
        }
    }

    pub fn bad_file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::BadFile {
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn address(address: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Address {
            address: address.into(),
            message: message.into(),
        }
    }

    pub fn mismatch(
        what: impl Into<String>,
        expected: impl ToString,
        found: impl ToString,
    ) -> Self {
        Error::Mismatch {
            what: what.into(),
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }
}

/// Attaches a path to an `std::io::Error`.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.into(),
            source,
        })
    }
}

/// The longest word (a run without spaces: a value, a path) an error line quotes whole.
const MAX_WORD: usize = 160;
/// The longest error line printed whole.
const MAX_LINE: usize = 2000;

/// `message` as the one line the binary prints: whitespace runs (newlines from libraries
/// included) become one space, and values too long to read are shortened, keeping both ends
/// and saying how much was left out (a 10 MB bad value must not become a 10 MB line).
pub fn one_line(message: &str) -> String {
    let words: Vec<String> = message
        .split_whitespace()
        .map(|w| shorten(w, MAX_WORD, 60, 30))
        .collect();
    shorten(&words.join(" "), MAX_LINE, 1600, 300)
}

/// `text` if it has at most `most` characters, else its first `head` and last `tail`
/// characters around a note of how many were left out.
fn shorten(text: &str, most: usize, head: usize, tail: usize) -> String {
    let count = text.chars().count();
    if count <= most {
        return text.to_string();
    }
    let start: String = text.chars().take(head).collect();
    let end: String = text.chars().skip(count - tail).collect();
    format!(
        "{start}…[{} characters left out]…{end}",
        count - head - tail
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_shortens_what_it_cannot_show() {
        assert_eq!(one_line("a\n  b\tc"), "a b c");
        let value = "x".repeat(10_000_000);
        let line = one_line(&format!("--window: {value:?} is not a size; {value}"));
        assert!(line.len() < 400, "{}", line.len());
        assert!(line.contains("characters left out"), "{line}");
        assert!(line.starts_with("--window: \"xxx"), "{line}");
        let many = "word ".repeat(100_000);
        let line = one_line(&many);
        assert!(
            line.chars().count() < 2100 && line.ends_with("word"),
            "{}",
            line.len()
        );
        // Characters, not bytes: no split inside a multi-byte character.
        let wide = "é".repeat(500);
        assert!(one_line(&wide).starts_with("ééé"));
    }
}
