//! Single image files (TIFF, PNG, JPEG) as 2-D (Y, X) or 3-D (C, Y, X) blocks.
//!
//! TIFF goes through the `tiff` crate (8/16/32/64-bit integers, signed or not, 32/64-bit
//! floats, any number of samples per pixel); PNG and JPEG through `image`. Channels stored
//! interleaved (channels-last) come out as C, Y, X.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use tiff::decoder::{Decoder, DecodingResult};
use tiff::tags::Tag;
use tiff::ColorType;

use super::{Block, DType, Element};
use crate::error::{Error, IoContext, Result};
use crate::with_block;

/// Shape and dtype of an image file, read from its header only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// (Y, X) for one channel, (C, Y, X) for several.
    pub shape: Vec<u64>,
    pub dtype: DType,
}

fn is_tiff(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| e == "tif" || e == "tiff")
}

fn bad(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::bad_file(path, format!("cannot read image: {e}"))
}

fn tiff_decoder(path: &Path) -> Result<Decoder<BufReader<File>>> {
    let file = File::open(path).at(path)?;
    Decoder::new(BufReader::new(file))
        .map(|d| d.with_limits(tiff::decoder::Limits::unlimited()))
        .map_err(|e| bad(path, e))
}

fn tiff_samples(path: &Path, color: ColorType) -> Result<(u16, u8)> {
    Ok(match color {
        ColorType::Gray(b) => (1, b),
        ColorType::GrayA(b) => (2, b),
        ColorType::RGB(b) => (3, b),
        ColorType::RGBA(b) => (4, b),
        ColorType::Multiband {
            bit_depth,
            num_samples,
        } => (num_samples, bit_depth),
        other => {
            return Err(bad(
                path,
                format!("TIFF colour type {other:?} is not supported"),
            ))
        }
    })
}

fn with_channels(channels: u64, y: u64, x: u64) -> Vec<u64> {
    if channels == 1 {
        vec![y, x]
    } else {
        vec![channels, y, x]
    }
}

/// Shape and dtype of the TIFF a decoder has open (its first and only page).
fn tiff_info(path: &Path, d: &mut Decoder<BufReader<File>>) -> Result<ImageInfo> {
    let (w, h) = d.dimensions().map_err(|e| bad(path, e))?;
    let color = d.colortype().map_err(|e| bad(path, e))?;
    if d.more_images() {
        return Err(bad(
            path,
            "multi-page TIFF: tessera reads one image per file (one slice per file); split the pages into files",
        ));
    }
    let (channels, bits) = tiff_samples(path, color)?;
    // One SampleFormat per sample; tessera needs them equal, so the first one decides.
    let format: u16 = d
        .find_tag_unsigned_vec::<u16>(Tag::SampleFormat)
        .map_err(|e| bad(path, e))?
        .and_then(|v| v.first().copied())
        .unwrap_or(1);
    let dtype = match (format, bits) {
        (1, 8) => DType::U8,
        (1, 16) => DType::U16,
        (1, 32) => DType::U32,
        (1, 64) => DType::U64,
        (2, 8) => DType::I8,
        (2, 16) => DType::I16,
        (2, 32) => DType::I32,
        (2, 64) => DType::I64,
        (3, 32) => DType::F32,
        (3, 64) => DType::F64,
        _ => {
            return Err(bad(
                path,
                format!("{bits}-bit TIFF samples of format {format} are not supported"),
            ))
        }
    };
    Ok(ImageInfo {
        shape: with_channels(channels.into(), h.into(), w.into()),
        dtype,
    })
}

/// Reads an image's shape and dtype without decoding its pixels.
///
/// # Errors
/// Missing or unreadable file, or an unsupported pixel format.
pub fn probe(path: &Path) -> Result<ImageInfo> {
    if is_tiff(path) {
        return tiff_info(path, &mut tiff_decoder(path)?);
    }
    use image::ImageDecoder;
    let decoder = image::ImageReader::open(path)
        .at(path)?
        .with_guessed_format()
        .at(path)?
        .into_decoder()
        .map_err(|e| bad(path, e))?;
    let (w, h) = decoder.dimensions();
    let color = decoder.color_type();
    let dtype = match color.bytes_per_pixel() / color.channel_count() {
        1 => DType::U8,
        2 => DType::U16,
        4 => DType::F32,
        _ => return Err(bad(path, format!("colour type {color:?} is not supported"))),
    };
    Ok(ImageInfo {
        shape: with_channels(color.channel_count().into(), h.into(), w.into()),
        dtype,
    })
}

/// Turns interleaved (Y, X, C) samples into a (Y, X) or (C, Y, X) array.
fn planar<T: Element>(data: Vec<T>, channels: usize, h: usize, w: usize) -> Option<ArrayD<T>> {
    let hwc = ArrayD::from_shape_vec(IxDyn(&[h, w, channels]), data).ok()?;
    if channels == 1 {
        return hwc.into_shape_with_order(IxDyn(&[h, w])).ok();
    }
    let chw = hwc.permuted_axes(IxDyn(&[2, 0, 1]));
    Some(chw.as_standard_layout().into_owned())
}

/// Decodes an image file into a (Y, X) or (C, Y, X) block.
///
/// # Errors
/// Missing, truncated or corrupt file, or an unsupported pixel format.
pub fn read(path: &Path) -> Result<Block> {
    if is_tiff(path) {
        let mut d = tiff_decoder(path)?;
        let info = tiff_info(path, &mut d)?;
        let (c, h, w) = match info.shape[..] {
            [h, w] => (1, h as usize, w as usize),
            [c, h, w] => (c as usize, h as usize, w as usize),
            _ => unreachable!("tiff_info returns 2-D or 3-D shapes"),
        };
        let decoded = d.read_image().map_err(|e| bad(path, e))?;
        let wrong = || bad(path, "decoded sample count does not match the header");
        let block = match decoded {
            DecodingResult::U8(v) => Block::U8(planar(v, c, h, w).ok_or_else(wrong)?),
            DecodingResult::U16(v) => Block::U16(planar(v, c, h, w).ok_or_else(wrong)?),
            DecodingResult::U32(v) => Block::U32(planar(v, c, h, w).ok_or_else(wrong)?),
            DecodingResult::U64(v) => Block::U64(planar(v, c, h, w).ok_or_else(wrong)?),
            DecodingResult::I8(v) => Block::I8(planar(v, c, h, w).ok_or_else(wrong)?),
            DecodingResult::I16(v) => Block::I16(planar(v, c, h, w).ok_or_else(wrong)?),
            DecodingResult::I32(v) => Block::I32(planar(v, c, h, w).ok_or_else(wrong)?),
            DecodingResult::I64(v) => Block::I64(planar(v, c, h, w).ok_or_else(wrong)?),
            DecodingResult::F32(v) => Block::F32(planar(v, c, h, w).ok_or_else(wrong)?),
            DecodingResult::F64(v) => Block::F64(planar(v, c, h, w).ok_or_else(wrong)?),
            DecodingResult::F16(_) => return Err(bad(path, "16-bit float TIFF is not supported")),
        };
        return Ok(block);
    }
    let img = image::ImageReader::open(path)
        .at(path)?
        .with_guessed_format()
        .at(path)?
        .decode()
        .map_err(|e| bad(path, e))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let c = img.color().channel_count() as usize;
    let wrong = || bad(path, "decoded sample count does not match the header");
    use image::DynamicImage as D;
    Ok(match img {
        D::ImageLuma8(i) => Block::U8(planar(i.into_raw(), c, h, w).ok_or_else(wrong)?),
        D::ImageLumaA8(i) => Block::U8(planar(i.into_raw(), c, h, w).ok_or_else(wrong)?),
        D::ImageRgb8(i) => Block::U8(planar(i.into_raw(), c, h, w).ok_or_else(wrong)?),
        D::ImageRgba8(i) => Block::U8(planar(i.into_raw(), c, h, w).ok_or_else(wrong)?),
        D::ImageLuma16(i) => Block::U16(planar(i.into_raw(), c, h, w).ok_or_else(wrong)?),
        D::ImageLumaA16(i) => Block::U16(planar(i.into_raw(), c, h, w).ok_or_else(wrong)?),
        D::ImageRgb16(i) => Block::U16(planar(i.into_raw(), c, h, w).ok_or_else(wrong)?),
        D::ImageRgba16(i) => Block::U16(planar(i.into_raw(), c, h, w).ok_or_else(wrong)?),
        D::ImageRgb32F(i) => Block::F32(planar(i.into_raw(), c, h, w).ok_or_else(wrong)?),
        D::ImageRgba32F(i) => Block::F32(planar(i.into_raw(), c, h, w).ok_or_else(wrong)?),
        other => {
            return Err(bad(
                path,
                format!("colour type {:?} is not supported", other.color()),
            ))
        }
    })
}

/// Decodes an image file into `out`, checking first that the file still has the shape and
/// dtype the plan saw (`expected`). Single-channel TIFFs of type `T` decode straight into
/// `out` with no intermediate buffer (the common case of big stacks); anything else decodes,
/// converts to `T` and copies. Channels-first `out` is (C, Y, X). Returns the first value a
/// float -> integer conversion rounded (it had a fractional part), for the caller to warn.
///
/// # Errors
/// As [`read`], plus a file that changed since planning or a value that does not fit `T`.
pub fn read_into<T: Element>(
    path: &Path,
    expected: &ImageInfo,
    mut out: ndarray::ArrayViewMutD<'_, T>,
) -> Result<Option<f64>> {
    // TIFF: one open file serves the header check and the decode.
    let mut tiff = if is_tiff(path) {
        Some(tiff_decoder(path)?)
    } else {
        None
    };
    let info = match tiff.as_mut() {
        Some(d) => tiff_info(path, d)?,
        None => probe(path)?,
    };
    let describe = |i: &ImageInfo| format!("{:?} {}", i.shape, i.dtype);
    if info != *expected {
        return Err(Error::mismatch(
            format!("slice {}", path.display()),
            describe(expected),
            describe(&info),
        ));
    }
    let want: Vec<u64> = out.shape().iter().map(|&n| n as u64).collect();
    if want != info.shape {
        return Err(Error::mismatch(
            format!("slice {}", path.display()),
            format!("shape {want:?}"),
            describe(&info),
        ));
    }
    if let (Some(d), true) = (
        tiff.as_mut(),
        info.shape.len() == 2 && info.dtype == T::DTYPE,
    ) {
        if let Some(samples) = out.as_slice_mut() {
            return d
                .read_image_bytes(bytemuck::cast_slice_mut(samples))
                .map(|()| None)
                .map_err(|e| bad(path, e));
        }
    }
    let decoded = read(path)?;
    let rounded = if T::DTYPE.is_float() {
        None
    } else {
        decoded.first_fraction()
    };
    let typed = decoded
        .cast(T::DTYPE, &path.display().to_string())?
        .into_array::<T>()
        .expect("cast gives the requested type");
    out.assign(&typed);
    Ok(rounded)
}

/// Writes a (Y, X) block, or a (C, Y, X) block with C of 3 or 4 (u8/u16), as an uncompressed
/// TIFF. Used by `tessera demo` and the tests to make input stacks.
///
/// # Errors
/// Unsupported shape/dtype, or a write failure.
pub fn write_tiff(path: &Path, block: &Block) -> Result<()> {
    use tiff::encoder::{colortype as ct, TiffEncoder};
    let shape = block.shape();
    let file = std::io::BufWriter::new(File::create(path).at(path)?);
    let mut enc = TiffEncoder::new(file).map_err(|e| bad(path, e))?;
    let unsupported = || {
        bad(
            path,
            format!(
                "cannot write a {} block of shape {shape:?} as TIFF",
                block.dtype()
            ),
        )
    };
    let interleaved = |b: &Block| -> Block {
        with_block!(b, a => {
            let v = a.view().permuted_axes(IxDyn(&[1, 2, 0])).as_standard_layout().into_owned();
            Element::into_block(v)
        })
    };
    let (h, w) = match shape[..] {
        [h, w] | [_, h, w] => (h as u32, w as u32),
        _ => return Err(unsupported()),
    };
    let res = match (shape.len(), block) {
        (2, Block::U8(a)) => {
            enc.write_image::<ct::Gray8>(w, h, a.as_slice().ok_or_else(unsupported)?)
        }
        (2, Block::U16(a)) => {
            enc.write_image::<ct::Gray16>(w, h, a.as_slice().ok_or_else(unsupported)?)
        }
        (2, Block::U32(a)) => {
            enc.write_image::<ct::Gray32>(w, h, a.as_slice().ok_or_else(unsupported)?)
        }
        (2, Block::I16(a)) => {
            enc.write_image::<ct::GrayI16>(w, h, a.as_slice().ok_or_else(unsupported)?)
        }
        (2, Block::I32(a)) => {
            enc.write_image::<ct::GrayI32>(w, h, a.as_slice().ok_or_else(unsupported)?)
        }
        (2, Block::F32(a)) => {
            enc.write_image::<ct::Gray32Float>(w, h, a.as_slice().ok_or_else(unsupported)?)
        }
        (3, b) if shape[0] == 3 || shape[0] == 4 => match (shape[0], interleaved(b)) {
            (3, Block::U8(a)) => {
                enc.write_image::<ct::RGB8>(w, h, a.as_slice().ok_or_else(unsupported)?)
            }
            (4, Block::U8(a)) => {
                enc.write_image::<ct::RGBA8>(w, h, a.as_slice().ok_or_else(unsupported)?)
            }
            (3, Block::U16(a)) => {
                enc.write_image::<ct::RGB16>(w, h, a.as_slice().ok_or_else(unsupported)?)
            }
            (4, Block::U16(a)) => {
                enc.write_image::<ct::RGBA16>(w, h, a.as_slice().ok_or_else(unsupported)?)
            }
            _ => return Err(unsupported()),
        },
        _ => return Err(unsupported()),
    };
    res.map_err(|e| bad(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiff_round_trips_gray_and_rgb() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.tif");
        let gray = Block::U16(ArrayD::from_shape_fn(IxDyn(&[3, 5]), |i| {
            (i[0] * 10 + i[1]) as u16
        }));
        write_tiff(&p, &gray).unwrap();
        assert_eq!(
            probe(&p).unwrap(),
            ImageInfo {
                shape: vec![3, 5],
                dtype: DType::U16
            }
        );
        assert_eq!(read(&p).unwrap(), gray);

        let p = dir.path().join("c.tif");
        let rgb = Block::U8(ArrayD::from_shape_fn(IxDyn(&[3, 2, 4]), |i| {
            (i[0] * 100 + i[1] * 10 + i[2]) as u8
        }));
        write_tiff(&p, &rgb).unwrap();
        assert_eq!(probe(&p).unwrap().shape, vec![3, 2, 4]);
        assert_eq!(read(&p).unwrap(), rgb);

        let p = dir.path().join("f.tif");
        let f = Block::F32(ArrayD::from_shape_fn(IxDyn(&[2, 2]), |i| {
            i[0] as f32 - 0.5 * i[1] as f32
        }));
        write_tiff(&p, &f).unwrap();
        assert_eq!(read(&p).unwrap(), f);
        let p = dir.path().join("s.tif");
        let s = Block::I16(ArrayD::from_shape_fn(IxDyn(&[2, 3]), |i| i[1] as i16 - 7));
        write_tiff(&p, &s).unwrap();
        assert_eq!(probe(&p).unwrap().dtype, DType::I16);
        assert_eq!(read(&p).unwrap(), s);
    }

    #[test]
    fn png_reads_channels_first() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.png");
        let img = image::RgbImage::from_fn(4, 2, |x, y| image::Rgb([x as u8, y as u8, 7]));
        img.save(&p).unwrap();
        assert_eq!(
            probe(&p).unwrap(),
            ImageInfo {
                shape: vec![3, 2, 4],
                dtype: DType::U8
            }
        );
        let b = read(&p).unwrap().into_array::<u8>().unwrap();
        assert_eq!(b[[0, 1, 3]], 3);
        assert_eq!(b[[1, 1, 3]], 1);
        assert_eq!(b[[2, 0, 0]], 7);
    }

    #[test]
    fn multi_page_tiff_is_refused_not_truncated() {
        use tiff::encoder::{colortype, TiffEncoder};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.tif");
        let mut enc = TiffEncoder::new(File::create(&p).unwrap()).unwrap();
        for _ in 0..2 {
            enc.write_image::<colortype::Gray8>(2, 2, &[1, 2, 3, 4])
                .unwrap();
        }
        drop(enc);
        let e = probe(&p).unwrap_err().to_string();
        assert!(e.contains("multi-page"), "{e}");
    }

    #[test]
    fn jpeg_reads_like_the_image_crate_decodes_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jpg");
        let img = image::GrayImage::from_fn(16, 8, |x, y| image::Luma([(x * 10 + y) as u8]));
        img.save(&p).unwrap();
        let decoded = image::open(&p).unwrap().into_luma8();
        let b = read(&p).unwrap().into_array::<u8>().unwrap();
        assert_eq!(b.shape(), &[8, 16]);
        assert_eq!(b.iter().copied().collect::<Vec<_>>(), decoded.into_raw());
    }

    #[test]
    fn truncated_tiff_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.tif");
        write_tiff(&p, &Block::U16(ArrayD::zeros(IxDyn(&[64, 64])))).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("t.tif"), "{e}");
    }
}
