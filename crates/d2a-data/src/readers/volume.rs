//! One NIfTI file read defensively: every size checked before it is allocated, scalar
//! datatypes only, the gzip stream read to its end (CRC-32 and length checked), and a file whose
//! header does not describe its voxels exactly refused.

use std::io::{Cursor, Read};
use std::path::Path;

use nifti::{IntoNdArray, NiftiHeader, NiftiObject};

use super::RawVolume;
use crate::{Error, Result};

/// The most voxels one volume may hold unless `D2A_MAX_VOXELS` says otherwise: 512 x 512 x
/// 1024, about 4 GB of memory while it is read.
pub const DEFAULT_MAX_VOXELS: u64 = 1 << 28;

/// The voxel limit in force: `D2A_MAX_VOXELS` if set to a number, else [`DEFAULT_MAX_VOXELS`].
pub fn max_voxels() -> u64 {
    std::env::var("D2A_MAX_VOXELS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MAX_VOXELS)
}

/// Opens `path` for reading if it is a regular file: a FIFO, socket or device would block or
/// never end, so it is refused before it is opened.
pub fn open_regular(path: &Path) -> Result<std::fs::File> {
    let io = |op| {
        move |source| Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    let meta = std::fs::metadata(path).map_err(io("read"))?;
    if !meta.is_file() {
        return Err(Error::NotARegularFile {
            path: path.to_path_buf(),
        });
    }
    std::fs::File::open(path).map_err(io("open"))
}

/// Bytes per voxel of the scalar datatypes d2a reads; every other datatype is refused by name.
fn bytes_per_voxel(datatype: i16) -> std::result::Result<u64, String> {
    Ok(match datatype {
        2 | 256 => 1,
        4 | 512 => 2,
        8 | 16 | 768 => 4,
        64 | 1024 | 1280 => 8,
        other => {
            let name = match other {
                1 => "binary (1 bit per voxel)",
                32 => "complex64",
                128 => "RGB24",
                1536 => "float128",
                1792 => "complex128",
                2048 => "complex256",
                2304 => "RGBA32",
                _ => "unknown",
            };
            return Err(format!(
                "datatype {other} ({name}) is not a scalar CT datatype; d2a reads integers and \
                 floats of one channel"
            ));
        }
    })
}

/// The header's checks: datatype, dimensions, voxel count within `limit`, finite voxel sizes.
/// Returns the number of bytes header, extensions and voxels take together.
fn check_header(header: &NiftiHeader, limit: u64) -> std::result::Result<u64, String> {
    let bpv = bytes_per_voxel(header.datatype)?;
    // The nifti crate sizes the data by bitpix and decodes it by datatype: they must agree
    // (a mismatch made it panic, found by the fuzz round).
    if i64::from(header.bitpix) != 8 * bpv as i64 {
        return Err(format!(
            "bitpix {} does not match datatype {} ({} bits per voxel)",
            header.bitpix,
            header.datatype,
            8 * bpv
        ));
    }
    let rank = usize::from(header.dim[0]);
    if !(1..=7).contains(&rank) {
        return Err(format!("dim[0] = {rank}: not a NIfTI rank (1 to 7)"));
    }
    let mut voxels: u64 = 1;
    for &d in &header.dim[1..=rank] {
        voxels = voxels.saturating_mul(u64::from(d));
    }
    if voxels == 0 {
        return Err(format!(
            "dimensions {:?} hold no voxel",
            &header.dim[1..=rank]
        ));
    }
    if voxels > limit {
        return Err(format!(
            "dimensions {:?} describe {voxels} voxels, more than the limit of {limit}; set \
             D2A_MAX_VOXELS to raise it",
            &header.dim[1..=rank]
        ));
    }
    if let Some(d) = header.pixdim[1..4].iter().find(|d| !d.is_finite()) {
        return Err(format!("voxel size {d} is not a finite number"));
    }
    if !(header.scl_slope.is_finite() && header.scl_inter.is_finite()) {
        return Err(format!(
            "intensity scaling (scl_slope {}, scl_inter {}) is not finite",
            header.scl_slope, header.scl_inter
        ));
    }
    let offset = header.vox_offset;
    if !(offset.is_finite() && (0.0..=f32::from(u16::MAX)).contains(&offset)) {
        return Err(format!("vox_offset {offset} is not a byte offset"));
    }
    Ok((offset as u64).max(352) + voxels * bpv)
}

/// The file's bytes, decompressed when it ends in `.gz`, checked against its header: exactly
/// the bytes the header describes (a longer file is refused, a shorter one is truncated), the
/// gzip trailer's CRC-32 and length verified.
fn checked_bytes(
    file: std::fs::File,
    path: &Path,
    limit: u64,
) -> std::result::Result<Vec<u8>, String> {
    let gz = path.to_string_lossy().to_ascii_lowercase().ends_with(".gz");
    let mut reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let mut bytes = vec![0u8; 348];
    reader
        .read_exact(&mut bytes)
        .map_err(|e| format!("no NIfTI header: {e}"))?;
    let header = NiftiHeader::from_reader(Cursor::new(&bytes)).map_err(|e| e.to_string())?;
    let total = check_header(&header, limit)?;
    let mut rest = Vec::new();
    (&mut reader)
        .take(total - 348)
        .read_to_end(&mut rest)
        .map_err(|e| read_error(gz, &e))?;
    if (rest.len() as u64) < total - 348 {
        return Err(format!(
            "truncated: the header describes {total} bytes, the file holds {}",
            348 + rest.len()
        ));
    }
    bytes.extend_from_slice(&rest);
    // To the end of the stream: the gzip trailer is checked there; nothing may follow.
    let mut extra = [0u8; 1];
    match reader.read(&mut extra) {
        Ok(0) => Ok(bytes),
        Ok(_) => Err(format!(
            "the file holds more data than its header describes ({total} bytes)"
        )),
        Err(e) => Err(read_error(gz, &e)),
    }
}

fn read_error(gz: bool, e: &std::io::Error) -> String {
    if gz {
        format!("corrupt gzip stream ({e})")
    } else {
        e.to_string()
    }
}

/// Reads a 2-D or 3-D NIfTI volume defensively (module docs).
pub(crate) fn read_volume(path: &Path) -> Result<RawVolume> {
    let err = |reason: String| Error::Nifti {
        path: path.to_path_buf(),
        reason,
    };
    let file = open_regular(path)?;
    let bytes = checked_bytes(file, path, max_voxels()).map_err(err)?;
    let obj =
        nifti::InMemNiftiObject::from_reader(Cursor::new(bytes)).map_err(|e| err(e.to_string()))?;
    // `checked_bytes` refused every datatype but the scalar ones.
    let header = obj.header().clone();
    let array = obj
        .into_volume()
        .into_ndarray::<f32>()
        .map_err(|e| err(e.to_string()))?;
    let dims = array.shape().to_vec();
    if dims.len() > 3 && dims[3..].iter().any(|&d| d > 1) {
        return Err(err(format!(
            "a {}-D volume of shape {dims:?}; expected 2-D or 3-D",
            dims.len()
        )));
    }
    let (x, y) = (dims[0], dims.get(1).copied().unwrap_or(1));
    let z = dims.get(2).copied().unwrap_or(1);
    // Fortran order: x varies fastest, as the file stores it.
    let values: Vec<f32> = array.t().iter().copied().collect();
    Ok(RawVolume {
        header,
        dims: vec![x, y, z],
        values,
    })
}
