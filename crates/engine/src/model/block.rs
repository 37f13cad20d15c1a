//! One decoder block of any supported family: its tensors and its forward pass.
//!
//! ```text
//! h = norm₁(x)                       q,k,v = proj(h)  (Phi-3: one fused qkv_proj, split by rows)
//! [Qwen3, Gemma 3] q,k = rms_norm per head (q_norm, k_norm)
//! q,k = rope(q,k)  (partial rotary; Gemma 3: local or global tables by layer)
//! a = o_proj(softmax(scale·q·kᵀ, causal, window) · v)
//! [Gemma 3] a = post_attention_layernorm(a)
//! x = x + a
//! h = norm₂(x)   (Gemma 3: pre_feedforward_layernorm; others: post_attention_layernorm)
//! m = down(act(gate(h)) · up(h))     (Phi-3: one fused gate_up_proj; act silu or gelu_tanh)
//! [Gemma 3] m = post_feedforward_layernorm(m)
//! y = x + m
//! ```
//! Norms multiply by `w` or, for Gemma, `1 + w`. Every op has a backward (`crate::ops`), so
//! gradients reach every adapter. Which parts a block has is data from
//! [`crate::model::family::Family`].

use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::model::ctx::ForwardCtx;
use crate::model::family::Activation;
use crate::model::linear::Linear;
use crate::ops::{
    causal_attention_with, geglu_with, rms_norm_with, rope_packed_with, rope_with, swiglu_with,
    OpPath, RopeTables,
};
use candle_core::{DType, Tensor};

/// q, k and v: three projections, or Phi-3's one `qkv_proj` (rows q, then k, then v).
#[derive(Clone)]
pub enum QkvProj {
    Split {
        q_proj: Linear,
        k_proj: Linear,
        v_proj: Linear,
    },
    Fused {
        qkv_proj: Linear,
    },
}

#[derive(Clone)]
pub struct Attention {
    pub qkv: QkvProj,
    pub o_proj: Linear,
    /// Per-head RMSNorm weights `[head_dim]` of q and k (Qwen3, Gemma 3).
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
}

/// gate and up: two projections, or Phi-3's one `gate_up_proj` (rows gate, then up).
#[derive(Clone)]
pub enum GateUpProj {
    Split { gate_proj: Linear, up_proj: Linear },
    Fused { gate_up_proj: Linear },
}

#[derive(Clone)]
pub struct Mlp {
    pub gate_up: GateUpProj,
    pub down_proj: Linear,
}

#[derive(Clone)]
pub struct Block {
    pub input_layernorm: Tensor,
    pub self_attn: Attention,
    /// Before the MLP, or (Gemma 3) on the attention output.
    pub post_attention_layernorm: Tensor,
    /// Gemma 3's norms before and after the MLP.
    pub pre_feedforward_layernorm: Option<Tensor>,
    pub post_feedforward_layernorm: Option<Tensor>,
    pub mlp: Mlp,
}

/// A block's linear layers from its parts, with paths inside the block, in Hugging Face order.
pub(crate) fn projections<'a>(
    qkv: &'a mut QkvProj,
    o_proj: &'a mut Linear,
    gate_up: &'a mut GateUpProj,
    down_proj: &'a mut Linear,
) -> Vec<(&'static str, &'a mut Linear)> {
    let mut out: Vec<(&'static str, &'a mut Linear)> = Vec::with_capacity(7);
    match qkv {
        QkvProj::Split {
            q_proj,
            k_proj,
            v_proj,
        } => {
            out.push(("self_attn.q_proj", q_proj));
            out.push(("self_attn.k_proj", k_proj));
            out.push(("self_attn.v_proj", v_proj));
        }
        QkvProj::Fused { qkv_proj } => out.push(("self_attn.qkv_proj", qkv_proj)),
    }
    out.push(("self_attn.o_proj", o_proj));
    match gate_up {
        GateUpProj::Split { gate_proj, up_proj } => {
            out.push(("mlp.gate_proj", gate_proj));
            out.push(("mlp.up_proj", up_proj));
        }
        GateUpProj::Fused { gate_up_proj } => out.push(("mlp.gate_up_proj", gate_up_proj)),
    }
    out.push(("mlp.down_proj", down_proj));
    out
}

impl Block {
    /// The block's linear layers with their paths inside the block, in Hugging Face order
    /// (the family's `linears`).
    pub fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        let a = &mut self.self_attn;
        let m = &mut self.mlp;
        projections(&mut a.qkv, &mut a.o_proj, &mut m.gate_up, &mut m.down_proj)
    }

    /// The linear layer at `path` inside the block (`self_attn.q_proj`), if the block has it.
    pub fn linear(&self, path: &str) -> Option<&Linear> {
        let a = &self.self_attn;
        match (path, &a.qkv, &self.mlp.gate_up) {
            ("self_attn.q_proj", QkvProj::Split { q_proj, .. }, _) => Some(q_proj),
            ("self_attn.k_proj", QkvProj::Split { k_proj, .. }, _) => Some(k_proj),
            ("self_attn.v_proj", QkvProj::Split { v_proj, .. }, _) => Some(v_proj),
            ("self_attn.qkv_proj", QkvProj::Fused { qkv_proj }, _) => Some(qkv_proj),
            ("self_attn.o_proj", _, _) => Some(&a.o_proj),
            ("mlp.gate_proj", _, GateUpProj::Split { gate_proj, .. }) => Some(gate_proj),
            ("mlp.up_proj", _, GateUpProj::Split { up_proj, .. }) => Some(up_proj),
            ("mlp.gate_up_proj", _, GateUpProj::Fused { gate_up_proj }) => Some(gate_up_proj),
            ("mlp.down_proj", _, _) => Some(&self.mlp.down_proj),
            _ => None,
        }
    }

    /// Mutable [`Block::linear`].
    pub fn linear_mut(&mut self, path: &str) -> Option<&mut Linear> {
        self.linears_mut()
            .into_iter()
            .find(|(p, _)| *p == path)
            .map(|(_, l)| l)
    }

    /// The block's norm weights by path inside the block (`…layernorm`, `self_attn.q_norm`).
    pub fn norms_mut(&mut self) -> Vec<(&'static str, &mut Tensor)> {
        let mut out: Vec<(&'static str, &mut Tensor)> = vec![
            ("input_layernorm", &mut self.input_layernorm),
            (
                "post_attention_layernorm",
                &mut self.post_attention_layernorm,
            ),
        ];
        if let Some(t) = self.pre_feedforward_layernorm.as_mut() {
            out.push(("pre_feedforward_layernorm", t));
        }
        if let Some(t) = self.post_feedforward_layernorm.as_mut() {
            out.push(("post_feedforward_layernorm", t));
        }
        if let Some(t) = self.self_attn.q_norm.as_mut() {
            out.push(("self_attn.q_norm", t));
        }
        if let Some(t) = self.self_attn.k_norm.as_mut() {
            out.push(("self_attn.k_norm", t));
        }
        out
    }
}

/// RMSNorm with the family's weight convention (`w`, or `1 + w` for Gemma).
/// `ops` picks the fused CPU kernel or the device-generic op.
pub(crate) fn norm(c: &Config, ops: OpPath, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let w = if c.family().norm_plus_one {
        // In f32: 1 + w in bf16 would keep only ~3 digits of w.
        (w.to_dtype(DType::F32)? + 1.0)?
    } else {
        w.clone()
    };
    Ok(rms_norm_with(ops, x, &w, c.rms_norm_eps)?)
}

/// Everything a block's forward needs besides its own tensors.
pub(crate) struct BlockCtx<'a> {
    pub config: &'a Config,
    pub layer: usize,
    pub rope: &'a RopeTables,
    pub offset: usize,
    pub ctx: &'a ForwardCtx,
}

impl Block {
    /// Runs the block on `x: [b, s, h]` (see the module docs).
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        bc: &BlockCtx,
        cache: Option<&mut Option<crate::model::kv_cache::KvSlot>>,
    ) -> Result<Tensor> {
        let (c, ops) = (bc.config, bc.ctx.ops);
        let h = norm(c, ops, x, &self.input_layernorm)?;
        let mut a = self.attention(&h, bc, cache)?;
        let ffn_norm = match (&self.pre_feedforward_layernorm, c.family().sandwich_norms) {
            (Some(pre), true) => {
                a = norm(c, ops, &a, &self.post_attention_layernorm)?;
                pre
            }
            _ => &self.post_attention_layernorm,
        };
        let x = (x + a)?;
        let h = norm(c, ops, &x, ffn_norm)?;
        let mut y = self.mlp(&h, c, bc.ctx)?;
        if let Some(post) = &self.post_feedforward_layernorm {
            y = norm(c, ops, &y, post)?;
        }
        Ok((x + y)?)
    }

    fn mlp(&self, h: &Tensor, c: &Config, ctx: &ForwardCtx) -> Result<Tensor> {
        let m = &self.mlp;
        let (gate, up) = match &m.gate_up {
            GateUpProj::Split { gate_proj, up_proj } => {
                (gate_proj.forward(h, ctx)?, up_proj.forward(h, ctx)?)
            }
            GateUpProj::Fused { gate_up_proj } => {
                let i = c.intermediate_size;
                let y = gate_up_proj.forward(h, ctx)?;
                (y.narrow(2, 0, i)?, y.narrow(2, i, i)?)
            }
        };
        let act = match c.hidden_act {
            Activation::Silu => swiglu_with(ctx.ops, &gate, &up)?,
            Activation::GeluTanh => geglu_with(ctx.ops, &gate, &up)?,
        };
        Ok(m.down_proj.forward(&act, ctx)?)
    }

    fn attention(
        &self,
        x: &Tensor,
        bc: &BlockCtx,
        cache: Option<&mut Option<crate::model::kv_cache::KvSlot>>,
    ) -> Result<Tensor> {
        let (c, ctx, offset) = (bc.config, bc.ctx, bc.offset);
        let attn = &self.self_attn;
        let (b, s, _) = x.dims3()?;
        let (nh, nkv, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        if offset + s > bc.rope.max_positions() {
            let why = if bc.rope.max_positions() == crate::limits::MAX_ROPE_POSITIONS {
                "max_position_embeddings, capped by this engine"
            } else if bc.rope.max_positions() < c.max_position_embeddings {
                "the original context of the model's longrope scaling, the longest it is exact for"
            } else {
                "max_position_embeddings"
            };
            return Err(Error::invalid(
                "sequence length",
                format!(
                    "{} positions exceed the model's context of {} ({why})",
                    offset + s,
                    bc.rope.max_positions()
                ),
            ));
        }
        // Head-major views of the projections. The fused CPU ops read q and k (RoPE, the q/k
        // norms) and v (the attention) through their strides, so in training nothing is
        // copied; the KV cache and other devices take contiguous heads.
        let in_place = cache.is_none() && ctx.ops.fused_on(x.device()) && x.dtype() == DType::F32;
        let heads = |t: Tensor, n: usize| -> candle_core::Result<Tensor> {
            let t = t.reshape((b, s, n, d))?.transpose(1, 2)?;
            if in_place {
                Ok(t)
            } else {
                t.contiguous()
            }
        };
        let (q, k, v) = match &attn.qkv {
            QkvProj::Split {
                q_proj,
                k_proj,
                v_proj,
            } => (
                q_proj.forward(x, ctx)?,
                k_proj.forward(x, ctx)?,
                v_proj.forward(x, ctx)?,
            ),
            QkvProj::Fused { qkv_proj } => {
                let y = qkv_proj.forward(x, ctx)?;
                let (qd, kvd) = (c.q_dim(), c.kv_dim());
                (
                    y.narrow(2, 0, qd)?,
                    y.narrow(2, qd, kvd)?,
                    y.narrow(2, qd + kvd, kvd)?,
                )
            }
        };
        let (mut q, mut k, v) = (heads(q, nh)?, heads(k, nkv)?, heads(v, nkv)?);
        if let (Some(qn), Some(kn)) = (&attn.q_norm, &attn.k_norm) {
            q = norm(c, ctx.ops, &q, qn)?;
            k = norm(c, ctx.ops, &k, kn)?;
        }
        let (q, mut k) = match &ctx.packing {
            Some(seg) => (
                rope_packed_with(ctx.ops, &q, bc.rope, seg)?,
                rope_packed_with(ctx.ops, &k, bc.rope, seg)?,
            ),
            None => (
                rope_with(ctx.ops, &q, bc.rope, offset)?,
                rope_with(ctx.ops, &k, bc.rope, offset)?,
            ),
        };
        let mut v = v;
        let decodes = cache.is_some();
        if let Some(slot) = cache {
            if ctx.packing.is_some() {
                return Err(Error::invalid(
                    "packing",
                    "packed rows cannot use a KV cache",
                ));
            }
            (k, v) = crate::model::kv_cache::KvSlot::append(slot, &k, &v)?;
        }
        // Grouped-query attention without repeating k and v: the query heads that share a key
        // head (adjacent, as in `repeat_kv`) read it in place, which saves two
        // [b, heads, kv_len, d] copies and their gradients per layer.
        let groups = nh / nkv;
        let window = c.layer_window(bc.layer);
        let scale = c.attention_scale();
        if s == 1 && decodes && !ctx.train && q.device().is_cpu() && q.dtype() == DType::F32 {
            // One new token over the cache: its own kernel, keys and values read in place.
            let q = q.reshape((b, nkv, groups, d))?;
            let out = crate::ops::decode_attention(&q, &k, &v, scale as f32, window)?;
            let out = out.reshape((b, 1, nh * d))?;
            return Ok(attn.o_proj.forward(&out, ctx)?);
        }
        let seg = ctx.packing.as_ref();
        let out = causal_attention_with(ctx.ops, &q, &k, &v, scale, offset, window, seg)?;
        Ok(attn.o_proj.forward(&out, ctx)?)
    }
}
