//! GGUF tensor types: llama.cpp's names for them and for `general.file_type`, which ones candle
//! 0.11 dequantizes, and a minimal header walk that finds the tensor whose type id candle does
//! not know (candle's own error does not name it). Not a GGUF reader: `Content::read` is.

use candle_core::quantized::GgmlDType;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// Tensor types [`super::GgufSource`] dequantizes (what candle 0.11 reads from GGUF).
pub const SUPPORTED_TYPES: &str =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";

/// Walks a GGUF v2/v3 header to the first tensor whose type id candle does not know.
pub(super) fn find_unknown_type(path: &Path) -> std::io::Result<Option<(String, u32)>> {
    let mut r = BufReader::new(std::fs::File::open(path)?);
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    let version = read_u32(&mut r)?;
    if &magic != b"GGUF" || !(2..=3).contains(&version) {
        return Ok(None);
    }
    let n_tensors = read_u64(&mut r)?;
    let n_kv = read_u64(&mut r)?;
    for _ in 0..n_kv {
        skip_string(&mut r, false)?;
        let ty = read_u32(&mut r)?;
        skip_value(&mut r, ty, 0, false)?;
    }
    for _ in 0..n_tensors {
        let len = read_u64(&mut r)?.min(1 << 16);
        let mut name = vec![0u8; len as usize];
        r.read_exact(&mut name)?;
        let n_dims = read_u32(&mut r)?.min(8);
        r.seek_relative(8 * i64::from(n_dims))?;
        let ty = read_u32(&mut r)?;
        read_u64(&mut r)?;
        if !matches!(ty, 0..=3 | 6..=15 | 30) {
            return Ok(Some((String::from_utf8_lossy(&name).into_owned(), ty)));
        }
    }
    Ok(None)
}

/// The integer value of `general.alignment` in a GGUF header, if it has one. candle
/// divides by it, so a file declaring 0 must be refused before candle reads the header.
pub(super) fn declared_alignment(path: &Path) -> std::io::Result<Option<i64>> {
    let mut r = BufReader::new(std::fs::File::open(path)?);
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    let version = read_u32(&mut r)?;
    if &magic != b"GGUF" || !(1..=3).contains(&version) {
        return Ok(None);
    }
    let v1 = version == 1;
    let _n_tensors = read_len(&mut r, v1)?;
    let n_kv = read_len(&mut r, v1)?;
    const KEY: &[u8] = b"general.alignment";
    for _ in 0..n_kv {
        let len = read_len(&mut r, v1)?;
        let is_key = if len == KEY.len() as u64 {
            let mut k = [0u8; KEY.len()];
            r.read_exact(&mut k)?;
            k == KEY
        } else {
            r.seek(SeekFrom::Current(
                i64::try_from(len).map_err(std::io::Error::other)?,
            ))?;
            false
        };
        let ty = read_u32(&mut r)?;
        if is_key {
            let mut b = [0u8; 8];
            let v = match ty {
                0 | 1 => {
                    r.read_exact(&mut b[..1])?;
                    if ty == 0 {
                        i64::from(b[0])
                    } else {
                        i64::from(b[0] as i8)
                    }
                }
                2 | 3 => {
                    r.read_exact(&mut b[..2])?;
                    let u = u16::from_le_bytes([b[0], b[1]]);
                    if ty == 2 {
                        i64::from(u)
                    } else {
                        i64::from(u as i16)
                    }
                }
                4 | 5 => {
                    let u = read_u32(&mut r)?;
                    if ty == 4 {
                        i64::from(u)
                    } else {
                        i64::from(u as i32)
                    }
                }
                _ => return Ok(None),
            };
            return Ok(Some(v));
        }
        skip_value(&mut r, ty, 0, v1)?;
    }
    Ok(None)
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// A string or array length: u32 in GGUF v1, u64 after.
fn read_len(r: &mut impl Read, v1: bool) -> std::io::Result<u64> {
    if v1 {
        read_u32(r).map(u64::from)
    } else {
        read_u64(r)
    }
}

fn skip_string(r: &mut (impl Read + Seek), v1: bool) -> std::io::Result<()> {
    let len = i64::try_from(read_len(r, v1)?).map_err(std::io::Error::other)?;
    r.seek(SeekFrom::Current(len))?;
    Ok(())
}

/// Skips one metadata value; `depth` bounds nested arrays, as candle's reader does.
fn skip_value(r: &mut (impl Read + Seek), ty: u32, depth: usize, v1: bool) -> std::io::Result<()> {
    let bad = || std::io::Error::other("bad metadata value");
    let fixed = |ty: u32| match ty {
        0 | 1 | 7 => Some(1i64),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    };
    match ty {
        8 => skip_string(r, v1),
        9 => {
            let elem = read_u32(r)?;
            let n = read_len(r, v1)?;
            match fixed(elem) {
                Some(size) => {
                    let len = i64::try_from(n).ok().and_then(|n| n.checked_mul(size));
                    r.seek(SeekFrom::Current(len.ok_or_else(bad)?)).map(|_| ())
                }
                None if depth < 64 => (0..n).try_for_each(|_| skip_value(r, elem, depth + 1, v1)),
                None => Err(bad()),
            }
        }
        _ => match fixed(ty) {
            Some(size) => r.seek(SeekFrom::Current(size)).map(|_| ()),
            None => Err(bad()),
        },
    }
}

pub(super) fn dtype_supported(d: GgmlDType) -> bool {
    !matches!(d, GgmlDType::Q8_1 | GgmlDType::Q8K)
}

/// llama.cpp's spelling of a tensor type.
pub fn type_name(d: GgmlDType) -> &'static str {
    match d {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
    }
}

/// Names of ggml type ids candle does not know (ggml.h `enum ggml_type`; "" = none).
pub(super) fn type_id_name(id: u32) -> &'static str {
    const NAMES: [&str; 40] = [
        "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "IQ2_XXS", "IQ2_XS",
        "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64",
        "IQ1_M", "", "", "", "", "TQ1_0", "TQ2_0", "", "", "", "MXFP4",
    ];
    match NAMES.get(id as usize) {
        Some(n) if !n.is_empty() => n,
        _ => "unknown type",
    }
}

/// llama.cpp's name for `general.file_type` (`enum llama_ftype`).
pub(super) fn file_type_name(ft: u64) -> String {
    const NAMES: [&str; 39] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "",
        "",
        "",
        "Q8_0",
        "Q5_0",
        "Q5_1",
        "Q2_K",
        "Q3_K_S",
        "Q3_K_M",
        "Q3_K_L",
        "Q4_K_S",
        "Q4_K_M",
        "Q5_K_S",
        "Q5_K_M",
        "Q6_K",
        "IQ2_XXS",
        "IQ2_XS",
        "Q2_K_S",
        "IQ3_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ3_M",
        "IQ2_S",
        "IQ2_M",
        "IQ4_XS",
        "IQ1_M",
        "BF16",
        "",
        "",
        "",
        "TQ1_0",
        "TQ2_0",
        "MXFP4_MOE",
    ];
    match NAMES.get(ft as usize) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => format!("file_type {ft}"),
    }
}
