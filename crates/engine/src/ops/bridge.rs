//! Moving data between a custom op's raw CPU storage and ordinary tensors, so op bodies can be
//! written with candle's fast (untracked) tensor kernels.

use candle_core::{CpuStorage, Device, Layout, Result, Storage, Tensor};

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
