//! A frozen weight kept in a GGUF file's own block type (Q4_0…Q8_0, the k-quants), for
//! inference: the matmul is candle's quantized kernel (`QMatMul`, the input row quantized to
//! the type's dot-product partner, as llama.cpp does), the embedding lookup dequantizes only
//! the rows asked for. Memory is the file's bytes for that tensor, not four bytes a weight.
//!
//! Training (QLoRA over the file's own types) goes through [`super::ggml_op`] instead, whose
//! tiled matmul has a backward. Not here: reading the tensors from a file (`model::gguf`).

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};
use std::borrow::Cow;
use std::sync::Arc;

use super::{ggml_op, q4_1_matmul};

/// Rows from which a product goes through the f32 GEMM over widened tiles (see `forward`).
const PREFILL_ROWS: usize = 16;

/// A `[rows, cols]` weight in a ggml block type.
pub struct GgmlWeight {
    q: Arc<QTensor>,
    mm: QMatMul,
}

impl GgmlWeight {
    /// Wraps a 2-D quantized tensor (`[out, in]`, rows = output features).
    ///
    /// # Errors
    /// A tensor that is not 2-D.
    pub fn new(q: QTensor) -> Result<Self> {
        q.shape().dims2()?;
        let q = Arc::new(q);
        // Not `QMatMul::from_arc`: it widens everything to f32 when the process has
        // CANDLE_DEQUANTIZE_ALL set; the storage here is the engine's choice.
        let mm = QMatMul::QTensor(q.clone());
        Ok(Self { q, mm })
    }

    /// Quantizes a dense `[out, in]` weight into `dtype` (tests and benchmarks build small
    /// quantized models this way).
    ///
    /// # Errors
    /// A shape whose rows do not split into the type's blocks.
    pub fn quantize(w: &Tensor, dtype: GgmlDType) -> Result<Self> {
        Self::new(QTensor::quantize(&w.to_dtype(DType::F32)?, dtype)?)
    }

    /// `(out, in)`.
    pub fn shape(&self) -> (usize, usize) {
        let d = self.q.shape().dims();
        (d[0], d[1])
    }

    pub fn dtype(&self) -> GgmlDType {
        self.q.dtype()
    }

    /// llama.cpp's name of the block type (`Q4_1`, `Q4_K`).
    pub fn type_name(&self) -> String {
        format!("{:?}", self.q.dtype()).replace("K", "_K")
    }

    /// Bytes held (the packed blocks).
    pub fn storage_bytes(&self) -> usize {
        self.q.storage_size_in_bytes()
    }

    /// `x · Wᵀ` for `x: [..., in]` (f32 on the CPU), no gradient. A prompt of many rows is
    /// compute-bound: there the weight is widened to f32 a tile of rows at a time for the f32
    /// GEMM (measured on SmolLM2, prefill 2× (Q4_1) to 4× (Q8_0) the integer kernels' speed,
    /// and exact in the activations); a few rows (decode) are memory-bound and take the
    /// integer dot kernels on the packed bytes.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        let rows = x.elem_count() / self.shape().1.max(1);
        if rows >= PREFILL_ROWS && x.device().is_cpu() {
            return self.forward_train(&x);
        }
        if self.q.dtype() == GgmlDType::Q4_1 && x.device().is_cpu() && x.dtype() == DType::F32 {
            return self.forward_q4_1(&x);
        }
        let dims = x.dims().to_vec();
        if dims.len() >= 2 {
            return self.mm.forward(&x);
        }
        // The kernel wants a matrix; a single vector becomes one row.
        self.mm.forward(&x.unsqueeze(0)?)?.squeeze(0)
    }

    /// Our integer kernel for Q4_1 (candle's is scalar for this type).
    fn forward_q4_1(&self, x: &Tensor) -> Result<Tensor> {
        let (n, k) = self.shape();
        let dims = x.dims().to_vec();
        let last = *dims.last().unwrap_or(&0);
        if last != k {
            candle_core::bail!("input of width {last} for a Q4_1 weight of {k} inputs")
        }
        let m = x.elem_count() / k.max(1);
        let w = self.q.data()?;
        let mut shape = dims;
        *shape.last_mut().expect("checked above") = n;
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; m * n];
        q4_1_matmul::matmul(&xs, m, k, &w, n, &mut out);
        Tensor::from_vec(out, shape, x.device())
    }

    /// `x · Wᵀ` through the tiled op with a backward ([`super::ggml_op`]): the training
    /// forward (QLoRA over the file's own types), the input gradient flowing to earlier
    /// adapters.
    pub fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        let (n, k) = self.shape();
        self.forward_tiled(x, ggml_op::tile_rows(n, k))
    }

    fn forward_tiled(&self, x: &Tensor, tile_rows: usize) -> Result<Tensor> {
        let op = ggml_op::GgmlMatMul {
            w: self.q.clone(),
            tile_rows,
        };
        x.to_dtype(DType::F32)?.apply_op1(op)
    }

    /// Rows `r0..r1` as an f32 `[r1 - r0, in]` tensor (a tile of a quantized output head).
    pub fn widen_rows(&self, r0: usize, r1: usize) -> Result<Tensor> {
        let k = self.shape().1;
        Tensor::from_vec(
            ggml_op::widen_rows(&self.q, r0, r1)?,
            (r1 - r0, k),
            &Device::Cpu,
        )
    }

    /// Rows `ids` of the weight as f32, `[n, in]` (an embedding lookup).
    pub fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        self.q.embedding(ids)
    }

    /// The whole weight as f32 (what the quantized kernel approximates).
    pub fn dequantize(&self) -> Result<Tensor> {
        self.q.dequantize(&Device::Cpu)?.to_dtype(DType::F32)
    }
}

/// The fused LoRA linear's view of a block-typed base (QLoRA over the file's own types).
impl crate::ops::FrozenRows for GgmlWeight {
    fn dims(&self) -> (usize, usize) {
        self.shape()
    }

    fn widen_rows_into(&self, r0: usize, r1: usize, out: &mut [f32]) -> Result<()> {
        ggml_op::widen_rows_into(&self.q, r0, r1, out)
    }

    fn widen_rows_serial(&self, r0: usize, r1: usize, out: &mut [f32]) -> Result<()> {
        ggml_op::widen_rows_serial(&self.q, r0, r1, out)
    }
}

/// Reorders whole rows of a quantized `[out, in]` tensor: row `i` of the result is row
/// `order[i]` of `q`. A row is a run of complete blocks, so this is a byte copy, exact.
///
/// # Errors
/// `order` not of length `out`, an index out of range, or a non-2-D tensor.
pub fn reorder_rows(q: &QTensor, order: &[usize]) -> Result<QTensor> {
    let (out, inp) = q.shape().dims2()?;
    if order.len() != out || order.iter().any(|&r| r >= out) {
        candle_core::bail!("row order of {} entries for {out} rows", order.len())
    }
    let dtype = q.dtype();
    let row_bytes = inp / dtype.block_size() * dtype.type_size();
    let data = q.data()?;
    let mut moved = Vec::with_capacity(data.len());
    for &r in order {
        moved.extend_from_slice(&data[r * row_bytes..(r + 1) * row_bytes]);
    }
    let storage = QStorage::from_data(Cow::Owned(moved), &Device::Cpu, dtype)?;
    QTensor::new(storage, (out, inp))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both Q4_1 paths against the f32 product with the dequantized weight: the prompt path
    /// (f32 GEMM over widened tiles) to float rounding, the decode path (8-bit activations)
    /// within its rounding; tiles smaller than the weight cover every row once.
    #[test]
    fn q4_1_prefill_and_decode_paths_match_the_dequantized_product() {
        let (n, k) = (70, 64);
        let w = Tensor::randn(0f32, 0.1, (n, k), &Device::Cpu).unwrap();
        let q = GgmlWeight::quantize(&w, GgmlDType::Q4_1).unwrap();
        let deq = q.dequantize().unwrap();
        for m in [1, PREFILL_ROWS + 3] {
            let x = Tensor::randn(0f32, 1.0, (1, m, k), &Device::Cpu).unwrap();
            let want = x.broadcast_matmul(&deq.t().unwrap()).unwrap();
            let got = q.forward(&x).unwrap();
            assert_eq!(got.dims(), &[1, m, n]);
            let err = (&got - &want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let tol = if m == 1 { 2e-2 } else { 1e-4 };
            assert!(err < tol, "m={m}: max error {err}");
        }
        let x = Tensor::randn(0f32, 1.0, (5, k), &Device::Cpu).unwrap();
        let want = x.matmul(&deq.t().unwrap()).unwrap();
        let got = q.forward_tiled(&x, 16).unwrap(); // 70 rows: 4 full tiles and one of 6
        let err = (&got - &want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(err.to_scalar::<f32>().unwrap() < 1e-4);
    }
}
