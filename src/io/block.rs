//! Element types and the type-erased N-D block that moves between stores and kernels.
//!
//! The data type is dispatched once, at the edge: a `Block` holds an `ndarray::ArrayD<T>` for
//! one of the ten numeric types, and `with_block!`/`with_dtype!` turn it back into typed code.

use ndarray::ArrayD;
use num_traits::{Bounded, NumCast, ToPrimitive};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The numeric element types tessera reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F32,
    F64,
}

impl DType {
    pub const ALL: [DType; 10] = [
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::F32,
        DType::F64,
    ];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
        }
    }

    /// The Zarr v3 (and numpy) name: `uint16`, `float32`, ...
    pub fn name(self) -> &'static str {
        match self {
            DType::U8 => "uint8",
            DType::U16 => "uint16",
            DType::U32 => "uint32",
            DType::U64 => "uint64",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::F32 => "float32",
            DType::F64 => "float64",
        }
    }

    /// Parses a Zarr v3 / numpy name, or the short form (`u16`, `f32`).
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL
            .into_iter()
            .find(|d| d.name() == name || format!("{d:?}").eq_ignore_ascii_case(name))
    }

    /// Parses numpy's type code without its byte order: the kind and the size in bytes
    /// (`u2`, `f4`), as `.npy` headers and Zarr v2 metadata write them.
    pub fn from_numpy_code(code: &str) -> Option<DType> {
        DType::from_name(match code {
            "u1" => "uint8",
            "u2" => "uint16",
            "u4" => "uint32",
            "u8" => "uint64",
            "i1" => "int8",
            "i2" => "int16",
            "i4" => "int32",
            "i8" => "int64",
            "f4" => "float32",
            "f8" => "float64",
            _ => return None,
        })
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }

    /// Whether an element of this type can equal `value` (compared as f64, the way kernels
    /// compare): integral and in range for integer types, exact in f32 for float32.
    pub fn holds_exactly(self, value: f64) -> bool {
        crate::with_dtype!(self, T => <T as NumCast>::from(value).and_then(|e: T| e.to_f64()) == Some(value))
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An element type tessera handles, tying a Rust type to its `DType`.
pub trait Element:
    Copy + Send + Sync + NumCast + ToPrimitive + Bounded + Default + bytemuck::Pod + 'static
{
    const DTYPE: DType;
    fn into_block(array: ArrayD<Self>) -> Block;
}

/// An owned N-D block of one of the supported element types, in C order.
#[derive(Clone, Debug, PartialEq)]
pub enum Block {
    U8(ArrayD<u8>),
    U16(ArrayD<u16>),
    U32(ArrayD<u32>),
    U64(ArrayD<u64>),
    I8(ArrayD<i8>),
    I16(ArrayD<i16>),
    I32(ArrayD<i32>),
    I64(ArrayD<i64>),
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
}

/// Runs `$body` with `$a` bound to the typed `ArrayD` inside a `Block` (by value or by ref,
/// following the expression).
#[macro_export]
macro_rules! with_block {
    ($block:expr, $a:ident => $body:expr) => {
        match $block {
            $crate::io::Block::U8($a) => $body,
            $crate::io::Block::U16($a) => $body,
            $crate::io::Block::U32($a) => $body,
            $crate::io::Block::U64($a) => $body,
            $crate::io::Block::I8($a) => $body,
            $crate::io::Block::I16($a) => $body,
            $crate::io::Block::I32($a) => $body,
            $crate::io::Block::I64($a) => $body,
            $crate::io::Block::F32($a) => $body,
            $crate::io::Block::F64($a) => $body,
        }
    };
}

/// Runs `$body` with the type alias `$t` set to the Rust type of a `DType`.
#[macro_export]
macro_rules! with_dtype {
    ($dtype:expr, $t:ident => $body:expr) => {
        match $dtype {
            $crate::io::DType::U8 => {
                type $t = u8;
                $body
            }
            $crate::io::DType::U16 => {
                type $t = u16;
                $body
            }
            $crate::io::DType::U32 => {
                type $t = u32;
                $body
            }
            $crate::io::DType::U64 => {
                type $t = u64;
                $body
            }
            $crate::io::DType::I8 => {
                type $t = i8;
                $body
            }
            $crate::io::DType::I16 => {
                type $t = i16;
                $body
            }
            $crate::io::DType::I32 => {
                type $t = i32;
                $body
            }
            $crate::io::DType::I64 => {
                type $t = i64;
                $body
            }
            $crate::io::DType::F32 => {
                type $t = f32;
                $body
            }
            $crate::io::DType::F64 => {
                type $t = f64;
                $body
            }
        }
    };
}

macro_rules! impl_element {
    ($($t:ty => $variant:ident),*) => {$(
        impl Element for $t {
            const DTYPE: DType = DType::$variant;
            fn into_block(array: ArrayD<Self>) -> Block {
                Block::$variant(array)
            }
        }
    )*};
}
impl_element!(u8 => U8, u16 => U16, u32 => U32, u64 => U64, i8 => I8, i16 => I16,
    i32 => I32, i64 => I64, f32 => F32, f64 => F64);

impl Block {
    pub fn dtype(&self) -> DType {
        match self {
            Block::U8(_) => DType::U8,
            Block::U16(_) => DType::U16,
            Block::U32(_) => DType::U32,
            Block::U64(_) => DType::U64,
            Block::I8(_) => DType::I8,
            Block::I16(_) => DType::I16,
            Block::I32(_) => DType::I32,
            Block::I64(_) => DType::I64,
            Block::F32(_) => DType::F32,
            Block::F64(_) => DType::F64,
        }
    }

    pub fn shape(&self) -> Vec<u64> {
        with_block!(self, a => a.shape().iter().map(|&n| n as u64).collect())
    }

    pub fn num_bytes(&self) -> u64 {
        self.shape().iter().product::<u64>() * self.dtype().size() as u64
    }

    /// A block of zeros.
    pub fn zeros(dtype: DType, shape: &[u64]) -> Block {
        let shape: Vec<usize> = shape.iter().map(|&n| n as usize).collect();
        with_dtype!(dtype, T => T::into_block(ArrayD::<T>::default(shape)))
    }

    /// The typed array, if the block holds `T`.
    pub fn into_array<T: Element>(self) -> Option<ArrayD<T>> {
        fn cast_box<T: 'static, U: 'static>(a: ArrayD<U>) -> Option<ArrayD<T>> {
            (Box::new(a) as Box<dyn std::any::Any>)
                .downcast::<ArrayD<T>>()
                .ok()
                .map(|b| *b)
        }
        with_block!(self, a => cast_box::<T, _>(a))
    }

    /// Every element as f64 (exact for all types but 64-bit integers beyond 2^53, which round).
    pub fn to_f64(self) -> ArrayD<f64> {
        with_block!(self, a => a.mapv(|x| x.to_f64().unwrap_or(f64::NAN)))
    }

    /// The first element of a float block that is not a whole number (what a cast to an
    /// integer type rounds away); `None` for integer blocks and whole-numbered floats.
    pub fn first_fraction(&self) -> Option<f64> {
        match self {
            Block::F32(a) => a
                .iter()
                .find(|v| v.fract() != 0.0)
                .map(|&v| <f64 as From<f32>>::from(v)),
            Block::F64(a) => a.iter().find(|v| v.fract() != 0.0).copied(),
            _ => None,
        }
    }

    /// Converts every element to `to`, refusing (not clamping) values the target cannot hold.
    /// Floats going to integers are rounded to nearest first, so 2.5 becomes 3 and -2.5 becomes -3.
    ///
    /// # Errors
    /// [`Error::Conversion`] naming `what` and the first value that does not fit.
    pub fn cast(self, to: DType, what: &str) -> Result<Block> {
        if self.dtype() == to {
            return Ok(self);
        }
        let from_float = self.dtype().is_float();
        with_block!(self, a => with_dtype!(to, T => {
            let mut out = ArrayD::<T>::default(a.raw_dim());
            for (o, &v) in out.iter_mut().zip(a.iter()) {
                let converted: Option<T> = if from_float && !T::DTYPE.is_float() {
                    v.to_f64().and_then(|f| NumCast::from(f.round()))
                } else {
                    NumCast::from(v)
                };
                *o = converted.ok_or_else(|| Error::Conversion {
                    what: what.to_string(),
                    value: v.to_f64().map_or("?".into(), |f| f.to_string()),
                    dtype: to.name().into(),
                })?;
            }
            Ok(T::into_block(out))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    #[test]
    fn names_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::from_name(d.name()), Some(d));
        }
        assert_eq!(DType::from_name("u16"), Some(DType::U16));
        assert_eq!(DType::from_name("complex64"), None);
    }

    #[test]
    fn cast_checks_range_and_rounds() {
        let b = Block::F32(ArrayD::from_shape_vec(IxDyn(&[3]), vec![1.4, 2.5, 254.6]).unwrap());
        let c = b.cast(DType::U8, "t").unwrap().into_array::<u8>().unwrap();
        assert_eq!(c.as_slice().unwrap(), &[1, 3, 255]);
        let b = Block::U16(ArrayD::from_shape_vec(IxDyn(&[2]), vec![3, 300]).unwrap());
        let err = b.cast(DType::U8, "slice 4").unwrap_err().to_string();
        assert!(err.contains("slice 4") && err.contains("300") && err.contains("uint8"));
        let b = Block::F64(ArrayD::from_shape_vec(IxDyn(&[1]), vec![f64::NAN]).unwrap());
        assert!(b.cast(DType::I32, "t").is_err());
    }

    #[test]
    fn first_fraction_finds_what_an_integer_cast_rounds_away() {
        let b =
            Block::F32(ArrayD::from_shape_vec(IxDyn(&[4]), vec![1.0, -2.0, 0.25, 0.5]).unwrap());
        assert_eq!(b.first_fraction(), Some(0.25));
        let b = Block::F64(ArrayD::from_shape_vec(IxDyn(&[2]), vec![3.0, -1e9]).unwrap());
        assert_eq!(b.first_fraction(), None);
        assert_eq!(Block::zeros(DType::U8, &[2]).first_fraction(), None);
    }

    #[test]
    fn holds_exactly_knows_sign_range_and_fractions() {
        assert!(!DType::U8.holds_exactly(-1.0));
        assert!(DType::I8.holds_exactly(-1.0));
        assert!(DType::U8.holds_exactly(255.0));
        assert!(!DType::U8.holds_exactly(256.0));
        assert!(!DType::I32.holds_exactly(0.5));
        assert!(DType::F32.holds_exactly(0.5));
        assert!(!DType::F32.holds_exactly(0.1)); // 0.1f32 as f64 is not 0.1
        assert!(DType::F64.holds_exactly(0.1));
        assert!(!DType::F64.holds_exactly(f64::NAN));
        assert!(DType::U64.holds_exactly(0.0));
    }

    #[test]
    fn zeros_and_bytes() {
        let z = Block::zeros(DType::U16, &[2, 3]);
        assert_eq!(z.shape(), vec![2, 3]);
        assert_eq!(z.num_bytes(), 12);
        assert!(z.into_array::<u8>().is_none());
    }
}
