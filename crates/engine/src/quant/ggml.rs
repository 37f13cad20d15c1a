//! A frozen weight kept in a GGUF file's own block type (Q4_0…Q8_0, the k-quants), for
//! inference: the matmul is candle's quantized kernel (`QMatMul`, the input row quantized to
//! the type's dot-product partner, as llama.cpp does), the embedding lookup dequantizes only
//! the rows asked for. Memory is the file's bytes for that tensor, not four bytes a weight.
//!
//! Not here: training over these weights (the kernel has no backward, so `model::linear`
//! refuses a training forward through one), and reading them from a file (`model::gguf`).

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};
use std::borrow::Cow;
use std::sync::Arc;

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

    /// `x · Wᵀ` for `x: [..., in]` (f32 on the CPU), no gradient.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        let dims = x.dims().to_vec();
        if dims.len() >= 2 {
            return self.mm.forward(&x);
        }
        // The kernel wants a matrix; a single vector becomes one row.
        self.mm.forward(&x.unsqueeze(0)?)?.squeeze(0)
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
