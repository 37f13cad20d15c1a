//! Moving data between a custom op's raw CPU storage and ordinary tensors, so op bodies can be
//! written with candle's fast (untracked) tensor kernels.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, Device, Layout, Result, Storage, Tensor};
use std::borrow::Cow;

/// Copies an f32 op input (any strides/offset) into a fresh contiguous, untracked tensor.
pub(crate) fn cpu_to_tensor(storage: &CpuStorage, layout: &Layout) -> Result<Tensor> {
    let data = storage.as_slice::<f32>()?;
    let v: Vec<f32> = match layout.contiguous_offsets() {
        Some((start, end)) => data[start..end].to_vec(),
        None => strided(data, layout),
    };
    Tensor::from_vec(v, layout.shape(), &Device::Cpu)
}

/// Gathers a strided view element by element (an odometer over the dims).
fn strided(data: &[f32], layout: &Layout) -> Vec<f32> {
    let dims = layout.dims();
    let stride = layout.stride();
    let n: usize = dims.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; dims.len()];
    let mut off = layout.start_offset();
    for _ in 0..n {
        out.push(data[off]);
        for d in (0..dims.len()).rev() {
            idx[d] += 1;
            off += stride[d];
            if idx[d] < dims[d] {
                break;
            }
            off -= stride[d] * dims[d];
            idx[d] = 0;
        }
    }
    out
}

/// Extracts the contiguous f32 storage of a tensor computed inside an op body.
pub(crate) fn tensor_to_cpu(t: &Tensor) -> Result<CpuStorage> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => {
            let data = cpu.as_slice::<f32>()?;
            let (start, end) = layout
                .contiguous_offsets()
                .ok_or_else(|| candle_core::Error::Msg("non-contiguous result".into()))?;
            if start == 0 && end == data.len() {
                Ok(cpu.clone())
            } else {
                Ok(CpuStorage::F32(data[start..end].to_vec()))
            }
        }
        _ => Err(candle_core::Error::Msg("expected a CPU tensor".into())),
    }
}

/// The f32 values of an op input in logical (row-major) order: borrowed when contiguous,
/// gathered through the strides otherwise (transposed, narrowed, broadcast views).
pub(crate) fn logical_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<Cow<'a, [f32]>> {
    let data = match storage {
        CpuStorage::F32(v) => v.as_slice(),
        other => bail!("expected an f32 op input, got {:?}", other.dtype()),
    };
    if let Some((start, end)) = layout.contiguous_offsets() {
        return Ok(Cow::Borrowed(&data[start..end]));
    }
    let dims = layout.dims();
    let stride = layout.stride();
    let n = layout.shape().elem_count();
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return Ok(Cow::Owned(out));
    }
    // Odometer over all but the last dimension; the last is walked with its own stride.
    let rank = dims.len();
    let (last, last_stride) = (dims[rank - 1], stride[rank - 1]);
    let mut idx = vec![0usize; rank - 1];
    let mut offset = layout.start_offset();
    loop {
        out.extend((0..last).map(|j| data[offset + j * last_stride]));
        let mut d = rank - 1;
        loop {
            if d == 0 {
                return Ok(Cow::Owned(out));
            }
            d -= 1;
            idx[d] += 1;
            offset += stride[d];
            if idx[d] < dims[d] {
                break;
            }
            offset -= idx[d] * stride[d];
            idx[d] = 0;
        }
    }
}

/// The f32 values of a tensor's storage in logical order, as [`logical_f32`] gives them: for
/// reading the tensors a custom op's backward receives without copying them.
pub(crate) fn tensor_f32<'a>(storage: &'a Storage, layout: &Layout) -> Result<Cow<'a, [f32]>> {
    match storage {
        Storage::Cpu(cpu) => logical_f32(cpu, layout),
        _ => bail!("expected a CPU tensor"),
    }
}
