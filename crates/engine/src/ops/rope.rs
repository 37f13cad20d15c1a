//! Rotary position embeddings, Hugging Face "rotate half" layout, with a backward pass.
//!
//! `y = x·cos + rotate_half(x)·sin`. The map is a rotation per (i, i+d/2) pair, so its
//! transpose is the rotation by the opposite angle: `dx = rope(g, cos, −sin)` (also when cos
//! and sin carry longrope's attention factor `a`: the map is then `a·R` and its transpose
//! `a·Rᵀ`). Training runs both ways through one loop here (`Rope::rotate`) that reads its
//! input through its strides, so q and k need no head-major copy first; untracked calls use
//! candle's `rope` kernel.
//!
//! Partial rotary (Phi-3/4's `partial_rotary_factor`): when the tables cover fewer dimensions
//! than the head, only the first `2·table_width` dimensions are rotated (rotate-half within
//! them) and the rest pass through, as transformers' Phi-3 does.

use super::generic::OpPath;
use super::segments::Segments;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::borrow::Cow;

/// Precomputed `cos`/`sin` tables, `[max_positions, head_dim/2]`.
#[derive(Clone, Debug)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl RopeTables {
    /// `θ_i = base^(−2i/d)`, angles `p·θ_i` for positions `0..max_positions`.
    pub fn new(head_dim: usize, base: f64, max_positions: usize, device: &Device) -> Result<Self> {
        let inv: Vec<f64> = (0..head_dim / 2)
            .map(|i| 1.0 / base.powf(2.0 * i as f64 / head_dim as f64))
            .collect();
        Self::from_inv_freq(&inv, max_positions, 1.0, device)
    }

    /// Tables from given inverse frequencies (after any scaling), cos and sin multiplied by
    /// `attention_factor` (longrope; 1 otherwise).
    pub fn from_inv_freq(
        inv_freq: &[f64],
        max_positions: usize,
        attention_factor: f64,
        device: &Device,
    ) -> Result<Self> {
        let half = inv_freq.len();
        let inv: Vec<f32> = inv_freq.iter().map(|&f| f as f32).collect();
        let inv = Tensor::from_vec(inv, (1, half), device)?;
        let pos = Tensor::arange(0u32, max_positions as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max_positions, 1))?;
        let freqs = pos.broadcast_mul(&inv)?;
        let (cos, sin) = (freqs.cos()?, freqs.sin()?);
        if attention_factor == 1.0 {
            return Ok(Self { cos, sin });
        }
        Ok(Self {
            cos: (cos * attention_factor)?,
            sin: (sin * attention_factor)?,
        })
    }

    /// Rotated dimensions per head.
    pub fn rotary_dim(&self) -> usize {
        2 * self.cos.dims()[1]
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }
}

struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let _profile = super::profile::span(super::profile::Kind::Elementwise);
        let y = self.rotate(storage, layout, 1.0)?;
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let _profile = super::profile::span(super::profile::Kind::Elementwise);
        let (gs, gl) = grad.storage_and_layout();
        let dx = match &*gs {
            candle_core::Storage::Cpu(cpu) => self.rotate(cpu, gl, -1.0)?,
            _ => candle_core::bail!("rope: expected a CPU gradient"),
        };
        Ok(Some(Tensor::from_vec(dx, grad.shape(), grad.device())?))
    }
}

impl Rope {
    /// `x·cos + rotate_half(x)·sin` (`sign` 1), or the transposed map (`sign` −1, the
    /// backward: the rotation by the opposite angle), as a contiguous `[b, h, s, d]`. `x` is
    /// read through its strides in one pass: the decoder hands q and k over as views of their
    /// projections' `[b, s, heads·d]` output, so no head-major copy precedes this.
    fn rotate(&self, storage: &CpuStorage, layout: &Layout, sign: f32) -> Result<Vec<f32>> {
        let (b, h, s, d) = layout.shape().dims4()?;
        let half = d / 2;
        let (x, st, start) = match layout.stride()[3] {
            1 => {
                let data = storage.as_slice::<f32>()?;
                let st = layout.stride();
                (
                    Cow::Borrowed(data),
                    [st[0], st[1], st[2]],
                    layout.start_offset(),
                )
            }
            _ => (
                super::logical_f32(storage, layout)?,
                [h * s * d, s * d, d],
                0,
            ),
        };
        let tables = |t: &Tensor| -> Result<Vec<f32>> { t.flatten_all()?.to_vec1::<f32>() };
        let (cos, sin) = (tables(&self.cos)?, tables(&self.sin)?);
        // `[s, d/2]`, or per batch row `[b, s, d/2]` (packed rows' own positions).
        let per_batch = self.cos.rank() == 3;
        if 2 * half != d || cos.len() != if per_batch { b } else { 1 } * s * half {
            candle_core::bail!(
                "rope: tables {:?} for x {:?}",
                self.cos.dims(),
                layout.dims()
            );
        }
        let mut y = vec![0f32; b * h * s * d];
        y.par_chunks_mut(s * d).enumerate().for_each(|(bh, out)| {
            let (bi, hi) = (bh / h, bh % h);
            for (t, o) in out.chunks_mut(d).enumerate() {
                let xr = &x[start + bi * st[0] + hi * st[1] + t * st[2]..][..d];
                let row = if per_batch { bi * s + t } else { t } * half;
                let (c, sn) = (&cos[row..row + half], &sin[row..row + half]);
                let (x1, x2) = xr.split_at(half);
                let (o1, o2) = o.split_at_mut(half);
                for i in 0..half {
                    o1[i] = x1[i] * c[i] - sign * x2[i] * sn[i];
                    o2[i] = x2[i] * c[i] + sign * x1[i] * sn[i];
                }
            }
        });
        Ok(y)
    }
}

/// Applies RoPE to `x: [b, heads, seq, head_dim]` for positions `offset..offset+seq`; with
/// tables narrower than the head, to its first `tables.rotary_dim()` dimensions only.
pub fn rope(x: &Tensor, tables: &RopeTables, offset: usize) -> Result<Tensor> {
    rope_with(OpPath::Auto, x, tables, offset)
}

/// [`rope`] through the kernel `path` picks for `x`'s device (the generic op off the CPU).
pub fn rope_with(path: OpPath, x: &Tensor, tables: &RopeTables, offset: usize) -> Result<Tensor> {
    let (d, rot) = (x.dim(3)?, tables.rotary_dim());
    if rot < d {
        // narrow and cat carry their own backward.
        let rotated = rope_with(path, &x.narrow(3, 0, rot)?, tables, offset)?;
        return Tensor::cat(&[&rotated, &x.narrow(3, rot, d - rot)?], 3);
    }
    let seq = x.dim(2)?;
    let cos = tables.cos.narrow(0, offset, seq)?.contiguous()?;
    let sin = tables.sin.narrow(0, offset, seq)?.contiguous()?;
    rope_tables_with(path, x, cos, sin)
}

/// [`rope_with`] at per-token positions: packed rows, whose position ids restart at 0 for
/// every example (`segments.positions()`); the tables are gathered to `[b, seq, d/2]`.
pub fn rope_packed_with(
    path: OpPath,
    x: &Tensor,
    tables: &RopeTables,
    segments: &Segments,
) -> Result<Tensor> {
    let (b, _, seq, d) = x.dims4()?;
    segments.check(b, seq)?;
    if segments.span() > tables.max_positions() {
        candle_core::bail!(
            "rope: an example of {} positions exceeds the tables' {}",
            segments.span(),
            tables.max_positions()
        );
    }
    let rot = tables.rotary_dim();
    if rot < d {
        let rotated = rope_packed_with(path, &x.narrow(3, 0, rot)?, tables, segments)?;
        return Tensor::cat(&[&rotated, &x.narrow(3, rot, d - rot)?], 3);
    }
    let pos = segments.positions();
    let gather = |t: &Tensor| -> Result<Tensor> {
        t.index_select(pos, 0)?
            .reshape((b, seq, rot / 2))?
            .contiguous()
    };
    rope_tables_with(path, x, gather(&tables.cos)?, gather(&tables.sin)?)
}

/// RoPE with `cos`/`sin` already cut to this call (`[seq, d/2]` or `[b, seq, d/2]`).
fn rope_tables_with(path: OpPath, x: &Tensor, cos: Tensor, sin: Tensor) -> Result<Tensor> {
    if !path.fused_on(x.device()) || x.dtype() != candle_core::DType::F32 {
        return super::generic_rowwise::rope(x, &cos, &sin);
    }
    if !x.track_op() {
        return candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin);
    }
    x.apply_op1(Rope { cos, sin })
}
