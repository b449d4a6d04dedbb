//! The flags several operations take, each declared once: its type, its clap parsing and its
//! serde default. An operation's parameter type (`ops/<op>/params.rs`) is written inside
//! [`job_params!`], where such a flag is its name alone under the command's own doc comment
//! (`/// Chunk compression.` then `codec,`); every other field is written out as usual.
//!
//! A macro rather than `#[command(flatten)]` + `#[serde(flatten)]` groups: serde cannot
//! combine `flatten` with `deny_unknown_fields` (what refuses a misspelt key in a job file,
//! with the list of the table's keys), and the fields stay where each command's `--help` and
//! its TOML table list them.
//!
//! The flags (doc comments come from the command):
//! - `codec`: `--codec`, [`crate::io::Codec`], default `auto`;
//! - `device`: `--device`, [`crate::gpu::DeviceChoice`], default `auto`, not serialized (not
//!   part of a run's `--resume` identity: every device gives the same bytes);
//! - `gpu_memory_limit`: `--gpu-memory-limit`, a size, not serialized (as `device`);
//! - `run`: the run options ([`crate::exec::RunOptions`]: `--overwrite`, `--resume`,
//!   `--dry-run`, `--report`), a job file's `[run]` table, not serialized;
//! - `chunks`, `shards`: comma-separated sizes, one per axis, optional;
//! - `window`, `step`, `border`: comma-separated sizes per spatial axis, empty by default;
//! - `pairs_per_chunk`: an optional count; `include_n` (with `--positions`) and `overlaps`:
//!   switches of the pairs groups;
//! - `seed`: a `u64`, default 0.

/// Declares an operation's parameter struct (doc comments, derives and attributes as written)
/// whose shared flags are given by name alone; see this module's documentation for the names.
macro_rules! job_params {
    (
        $(#[$meta:meta])*
        pub struct $name:ident { $($body:tt)* }
    ) => {
        $crate::ops::flags::job_params!(@fields [$(#[$meta])* pub struct $name] [] $($body)*);
    };
    // Fields are taken one by one into `$done`; the struct is written when none is left.
    (@fields [$($head:tt)*] [$($done:tt)*]) => {
        $($head)* { $($done)* }
    };
    (@fields $head:tt [$($done:tt)*] $(#[$attr:meta])* pub $field:ident : $ty:ty, $($rest:tt)*) => {
        $crate::ops::flags::job_params!(@fields $head
            [$($done)* $(#[$attr])* pub $field: $ty,] $($rest)*);
    };
    (@fields $head:tt $done:tt $(#[$doc:meta])* $flag:ident, $($rest:tt)*) => {
        $crate::ops::flags::job_params!(@flag [$head $done [$(#[$doc])*] $($rest)*] $flag);
    };
    // A shared flag's declaration, handed to `@put` with what comes after it.
    (@flag $k:tt codec) => {
        $crate::ops::flags::job_params!(@put $k
            [#[arg(long, value_enum, default_value_t)] #[serde(default)]]
            codec: $crate::io::Codec);
    };
    (@flag $k:tt device) => {
        $crate::ops::flags::job_params!(@put $k
            [#[arg(long, default_value_t, value_name = "auto|cpu|cuda|cuda:N")]
             #[serde(default, skip_serializing)]]
            device: $crate::gpu::DeviceChoice);
    };
    (@flag $k:tt gpu_memory_limit) => {
        $crate::ops::flags::job_params!(@put $k
            [#[arg(long)] #[serde(default, skip_serializing)]]
            gpu_memory_limit: Option<String>);
    };
    (@flag $k:tt run) => {
        $crate::ops::flags::job_params!(@put $k
            [#[command(flatten)] #[serde(skip)]]
            run: $crate::exec::RunOptions);
    };
    (@flag $k:tt pairs_per_chunk) => {
        $crate::ops::flags::job_params!(@put $k
            [#[arg(long)] #[serde(default)]]
            pairs_per_chunk: Option<u64>);
    };
    (@flag $k:tt include_n) => {
        $crate::ops::flags::job_params!(@put $k
            [#[arg(long, requires = "positions")] #[serde(default)]]
            include_n: bool);
    };
    (@flag $k:tt overlaps) => {
        $crate::ops::flags::job_params!(@put $k
            [#[arg(long)] #[serde(default)]]
            overlaps: bool);
    };
    (@flag $k:tt seed) => {
        $crate::ops::flags::job_params!(@put $k
            [#[arg(long, default_value_t = 0)] #[serde(default)]]
            seed: u64);
    };
    (@flag $k:tt chunks) => {
        $crate::ops::flags::job_params!(@put $k
            [#[arg(long, value_delimiter = ',')] #[serde(default)]]
            chunks: Option<Vec<u64>>);
    };
    (@flag $k:tt shards) => {
        $crate::ops::flags::job_params!(@put $k
            [#[arg(long, value_delimiter = ',')] #[serde(default)]]
            shards: Option<Vec<u64>>);
    };
    (@flag $k:tt window) => {
        $crate::ops::flags::job_params!(@put $k
            [#[arg(long, value_delimiter = ',')] #[serde(default)]]
            window: Vec<u64>);
    };
    (@flag $k:tt step) => {
        $crate::ops::flags::job_params!(@put $k
            [#[arg(long, value_delimiter = ',')] #[serde(default)]]
            step: Vec<u64>);
    };
    (@flag $k:tt border) => {
        $crate::ops::flags::job_params!(@put $k
            [#[arg(long, value_delimiter = ',')] #[serde(default)]]
            border: Vec<u64>);
    };
    (@put [$head:tt [$($done:tt)*] [$($doc:tt)*] $($rest:tt)*]
        [$($attr:tt)*] $field:ident : $($ty:tt)*) => {
        $crate::ops::flags::job_params!(@fields $head
            [$($done)* $($doc)* $($attr)* pub $field: $($ty)*,] $($rest)*);
    };
}
pub(crate) use job_params;
