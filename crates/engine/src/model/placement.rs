//! Where a decoder's tensors live and in which dtype it computes: [`Decoder::to_device`] moves
//! every tensor (embedding, norms, dense and NF4 bases, biases, LoRA adapters, RoPE tables) to
//! one device, so a forward pass never crosses between host and device except for its token
//! ids in and its loss or logits out.
//!
//! Precision on a GPU follows mixed-precision practice: activations and frozen dense weights
//! in the compute dtype (bf16 by default, [`default_compute_dtype`]); NF4 codes stay 4-bit and
//! are dequantized into the compute dtype tile by tile; LoRA adapters stay f32, and whatever
//! the method makes trainable is an f32 copy (`peft::method::apply_method`), so gradients and
//! optimizer state are f32. On the CPU nothing changes: f32 compute, bases as stored.

use crate::error::Result;
use crate::model::decoder::Decoder;
use crate::model::linear::{Base, Linear};
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

/// The activations' dtype a device computes in by default: f32 on the CPU (no fast bf16 GEMM
/// there), bf16 on CUDA and Metal.
pub fn default_compute_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    }
}

impl Decoder {
    /// The device every tensor of this decoder lives on.
    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    /// The dtype of its activations.
    pub fn compute_dtype(&self) -> DType {
        self.compute
    }

    /// This decoder on `device` in that device's default precision
    /// ([`default_compute_dtype`]); a copy sharing the tensors when it is there already.
    ///
    /// # Errors
    /// As [`Decoder::to_device`].
    pub fn on_device(&self, device: &Device) -> Result<Decoder> {
        if self.device().same_device(device) {
            return Ok(self.clone());
        }
        self.to_device(device, default_compute_dtype(device))
    }

    /// [`Decoder::storage_report`] with where the weights live and the compute dtype.
    pub fn placement_report(&self) -> crate::model::decoder::StorageReport {
        crate::model::decoder::StorageReport {
            device: Some(crate::device::describe(self.device())),
            compute_dtype: Some(format!("{:?}", self.compute).to_lowercase()),
            ..self.storage_report()
        }
    }

    /// This decoder on `device`, computing in `compute` (f32 or bf16/f16). Frozen dense tensors
    /// are cast to `compute` when it is a half type (a GPU's default), kept as stored when it
    /// is f32. Trainable (`Var`) tensors are refused: place the model first, then apply the
    /// method, so the trainable copies are made on the device.
    ///
    /// # Errors
    /// [`crate::Error::Invalid`] for a trainable tensor; candle errors for a failed copy.
    pub fn to_device(&self, device: &Device, compute: DType) -> Result<Decoder> {
        let mut d = self.clone();
        if !device.is_cpu() {
            // GGUF block types run through candle's CPU kernels here; on a GPU they are
            // widened like any dense weight.
            d.dequantize_all()?;
        }
        let half = compute != DType::F32;
        let place = |t: &Tensor| -> Result<Tensor> {
            let t = t.to_device(device)?;
            Ok(if half && t.dtype().is_float() && t.dtype() != compute {
                t.to_dtype(compute)?
            } else {
                t
            })
        };
        for (name, t) in d.named_tensors_mut() {
            if t.is_variable() {
                return Err(crate::Error::invalid(
                    "device",
                    format!("{name} is trainable; move the model before applying the method"),
                ));
            }
            *t = place(t)?;
        }
        let move_linear = |lin: &mut Linear| -> Result<()> {
            if let Base::Nf4(q) = &lin.base {
                lin.base = Base::Nf4(Arc::new(q.to_device(device)?));
            }
            if let Some(l) = lin.lora.as_mut() {
                if l.a.is_variable() || l.b.is_variable() {
                    return Err(crate::Error::invalid(
                        "device",
                        "a LoRA adapter is training; move the model before applying the method",
                    ));
                }
                // Adapters stay f32 (their gradients and optimizer state are f32).
                l.a = l.a.to_device(device)?;
                l.b = l.b.to_device(device)?;
            }
            Ok(())
        };
        for (_, lin) in d.linears_mut() {
            move_linear(lin)?;
        }
        if let Some(h) = d.lm_head.as_mut() {
            move_linear(h)?;
        }
        let move_tables = |t: &crate::ops::RopeTables| -> Result<crate::ops::RopeTables> {
            Ok(crate::ops::RopeTables {
                cos: t.cos.to_device(device)?,
                sin: t.sin.to_device(device)?,
            })
        };
        d.rope = move_tables(&d.rope)?;
        d.rope_local = d.rope_local.as_ref().map(move_tables).transpose()?;
        d.compute = compute;
        Ok(d)
    }
}
