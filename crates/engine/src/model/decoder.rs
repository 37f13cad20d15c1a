//! Our Llama-family decoder (Llama 2/3, SmolLM, Mistral, Qwen2), built for training.
//!
//! Differences from `candle_transformers::models::llama`, and why:
//! - it returns logits for every position (training needs them all);
//! - it is built only from ops with a backward pass (`crate::ops` supplies fused ones where
//!   candle's have none), so gradients reach every adapter;
//! - its linear layers are public [`Linear`]s that LoRA/QLoRA wrap, and its tensors keep
//!   Hugging Face names so adapters and exports interoperate.
//!
//! Shapes: ids `[b, s]` → hidden `[b, s, h]` → logits `[b, s, vocab]`. Attention:
//! q `[b, heads, s, d]`, k/v `[b, kv_heads, t, d]` with `t = cached + s`, GQA by repeating
//! k/v heads. Compute is f32; base weights may be stored bf16 (widened per matmul) or NF4.

use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::model::ctx::ForwardCtx;
use crate::model::linear::{matmul_t, Linear};
use crate::model::tensors::TensorSource;
use crate::ops::{causal_softmax_grouped, rms_norm, rope, swiglu, RopeTables};
use candle_core::{DType, Device, Tensor, D};

/// How base weights are stored once loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum WeightDtype {
    /// Exact; 4 bytes per parameter.
    #[default]
    F32,
    /// Half the memory; widened to f32 for every matmul (candle has no bf16 CPU GEMM).
    Bf16,
}

/// QLoRA's base storage: the linear layers of every block in NF4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct QuantizeOptions {
    /// Quantize the absmax constants too (≈ 4.127 instead of 4.5 bits per weight).
    pub double_quant: bool,
    /// Also quantize an untied `lm_head` (tied heads share the embedding, which stays dense).
    pub lm_head: bool,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        Self {
            double_quant: true,
            lm_head: false,
        }
    }
}

/// How the base weights are stored in memory ([`Decoder::load`]'s options): dense in `dtype`,
/// or with the block linears in NF4. Which storage a run uses is decided by its method
/// (`peft::method::Method::base_storage`), never by a front end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct LoadOptions {
    pub dtype: WeightDtype,
    /// NF4 for the block linears (QLoRA). Tensors are quantized one at a time as they are read,
    /// so loading never holds the whole model in f32.
    pub quantize: Option<QuantizeOptions>,
}

impl LoadOptions {
    /// Dense weights in `dtype`.
    pub fn dense(dtype: WeightDtype) -> Self {
        Self {
            dtype,
            quantize: None,
        }
    }

    /// Block linears in NF4 with double quantization (QLoRA's base), other tensors in `dtype`.
    pub fn nf4(dtype: WeightDtype) -> Self {
        Self {
            dtype,
            quantize: Some(QuantizeOptions::default()),
        }
    }

    /// `f32`, `bf16`, `nf4` or `nf4+bf16`, for messages and run records.
    pub fn describe(&self) -> String {
        let dense = match self.dtype {
            WeightDtype::F32 => "f32",
            WeightDtype::Bf16 => "bf16",
        };
        match (self.quantize, self.dtype) {
            (None, _) => dense.to_string(),
            (Some(_), WeightDtype::F32) => "nf4".to_string(),
            (Some(_), _) => format!("nf4+{dense}"),
        }
    }
}

/// How the base linears of a decoder are actually stored: counted from the layers themselves,
/// so a test or a user can see that a QLoRA run really runs over NF4.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct StorageReport {
    /// Linear layers (block projections and an untied `lm_head`) with an NF4 base.
    pub nf4_linears: usize,
    /// Linear layers with a dense frozen base.
    pub dense_linears: usize,
    /// Linear layers whose base weight trains (full or selective fine-tuning).
    pub trainable_linears: usize,
    /// Linear layers carrying a LoRA adapter.
    pub adapted_linears: usize,
    /// Bytes of base weights as stored (NF4 at its packed size).
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub base_bytes: u64,
}

#[derive(Clone)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
}

#[derive(Clone)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

#[derive(Clone)]
pub struct Block {
    pub input_layernorm: Tensor,
    pub self_attn: Attention,
    pub post_attention_layernorm: Tensor,
    pub mlp: Mlp,
}

impl Block {
    /// The block's seven projections with their paths inside the block, in HF order.
    pub fn linears_mut(&mut self) -> [(&'static str, &mut Linear); 7] {
        projections(&mut self.self_attn, &mut self.mlp)
    }
}

fn projections<'a>(a: &'a mut Attention, m: &'a mut Mlp) -> [(&'static str, &'a mut Linear); 7] {
    {
        [
            ("self_attn.q_proj", &mut a.q_proj),
            ("self_attn.k_proj", &mut a.k_proj),
            ("self_attn.v_proj", &mut a.v_proj),
            ("self_attn.o_proj", &mut a.o_proj),
            ("mlp.gate_proj", &mut m.gate_proj),
            ("mlp.up_proj", &mut m.up_proj),
            ("mlp.down_proj", &mut m.down_proj),
        ]
    }
}

/// Per-layer key/value cache for incremental decoding.
#[derive(Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
        }
    }

    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(Some((k, _))) => k.dims()[2],
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The whole decoder.
#[derive(Clone)]
pub struct Decoder {
    pub config: Config,
    pub embed_tokens: Tensor,
    pub layers: Vec<Block>,
    pub norm: Tensor,
    /// `None` when the output projection is tied to `embed_tokens`.
    pub lm_head: Option<Linear>,
    rope: RopeTables,
}

struct Loader<'a> {
    src: &'a dyn TensorSource,
    dtype: WeightDtype,
    quantize: Option<QuantizeOptions>,
}

impl Loader<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.get_f32(name, shape)?;
        Ok(match self.dtype {
            WeightDtype::F32 => t,
            // Norm vectors are tiny; only matrices are narrowed.
            WeightDtype::Bf16 if shape.len() == 2 => t.to_dtype(DType::BF16)?,
            WeightDtype::Bf16 => t,
        })
    }

    fn get_f32(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let found = self.src.shape(name).ok_or_else(|| Error::Tensor {
            file: self.src.label(),
            tensor: name.into(),
            message: "missing".into(),
        })?;
        if found != shape {
            return Err(Error::Tensor {
                file: self.src.label(),
                tensor: name.into(),
                message: format!("shape {found:?}, expected {shape:?} from config.json"),
            });
        }
        self.src.load(name)
    }

    fn linear(&self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let quantize = self.quantize.filter(|q| prefix != "lm_head" || q.lm_head);
        let w = match quantize {
            Some(q) => {
                let name = format!("{prefix}.weight");
                let f32w = self.get_f32(&name, &[out, inp])?;
                let nf4 = crate::quant::nf4::Nf4Tensor::from_tensor(&name, &f32w, q.double_quant)?;
                return Ok(Linear {
                    base: crate::model::linear::Base::Nf4(std::sync::Arc::new(nf4)),
                    bias: if bias {
                        Some(self.get(&format!("{prefix}.bias"), &[out])?)
                    } else {
                        None
                    },
                    lora: None,
                    merged: false,
                });
            }
            None => self.get(&format!("{prefix}.weight"), &[out, inp])?,
        };
        let b = if bias {
            Some(self.get(&format!("{prefix}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Linear::dense(w, b))
    }
}

impl Decoder {
    /// Builds the decoder from Hugging Face-named tensors, one tensor at a time.
    ///
    /// # Errors
    /// [`Error::Tensor`] naming the file and tensor when one is missing or mis-shaped.
    pub fn load(config: &Config, src: &dyn TensorSource, opts: &LoadOptions) -> Result<Self> {
        let c = config;
        let l = Loader {
            src,
            dtype: opts.dtype,
            quantize: opts.quantize,
        };
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let embed_tokens = l.get("model.embed_tokens.weight", &[c.vocab_size, h])?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for n in 0..c.num_hidden_layers {
            let p = format!("model.layers.{n}");
            layers.push(Block {
                input_layernorm: l.get(&format!("{p}.input_layernorm.weight"), &[h])?,
                self_attn: Attention {
                    q_proj: l.linear(&format!("{p}.self_attn.q_proj"), c.q_dim(), h, c.qkv_bias)?,
                    k_proj: l.linear(
                        &format!("{p}.self_attn.k_proj"),
                        c.kv_dim(),
                        h,
                        c.qkv_bias,
                    )?,
                    v_proj: l.linear(
                        &format!("{p}.self_attn.v_proj"),
                        c.kv_dim(),
                        h,
                        c.qkv_bias,
                    )?,
                    o_proj: l.linear(&format!("{p}.self_attn.o_proj"), h, c.q_dim(), c.o_bias)?,
                },
                post_attention_layernorm: l
                    .get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                mlp: Mlp {
                    gate_proj: l.linear(&format!("{p}.mlp.gate_proj"), i, h, c.mlp_bias)?,
                    up_proj: l.linear(&format!("{p}.mlp.up_proj"), i, h, c.mlp_bias)?,
                    down_proj: l.linear(&format!("{p}.mlp.down_proj"), h, i, c.mlp_bias)?,
                },
            });
        }
        let norm = l.get("model.norm.weight", &[h])?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(l.linear("lm_head", c.vocab_size, h, false)?)
        };
        Self::from_parts(c.clone(), embed_tokens, layers, norm, lm_head)
    }

    pub fn from_parts(
        config: Config,
        embed_tokens: Tensor,
        layers: Vec<Block>,
        norm: Tensor,
        lm_head: Option<Linear>,
    ) -> Result<Self> {
        let rope = RopeTables::new(
            config.head_dim,
            config.rope_theta,
            config.max_position_embeddings,
            &Device::Cpu,
        )?;
        Ok(Self {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
        })
    }

    /// Token embeddings, `[b, s] → [b, s, h]`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        let e = self
            .embed_tokens
            .to_dtype(DType::F32)?
            .index_select(&flat, 0)?;
        Ok(e.reshape((b, s, self.config.hidden_size))?)
    }

    /// Runs one decoder block on `x: [b, s, h]` at absolute positions `offset..offset+s`.
    pub fn block_forward(
        &self,
        n: usize,
        x: &Tensor,
        offset: usize,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let block = &self.layers[n];
        let eps = self.config.rms_norm_eps;
        let h = rms_norm(x, &block.input_layernorm.to_dtype(DType::F32)?, eps)?;
        let a = self.attention(&block.self_attn, &h, offset, cache, ctx)?;
        let x = (x + a)?;
        let h = rms_norm(
            &x,
            &block.post_attention_layernorm.to_dtype(DType::F32)?,
            eps,
        )?;
        let m = &block.mlp;
        let gate = m.gate_proj.forward(&h, ctx)?;
        let up = m.up_proj.forward(&h, ctx)?;
        let y = m.down_proj.forward(&swiglu(&gate, &up)?, ctx)?;
        Ok((x + y)?)
    }

    fn attention(
        &self,
        attn: &Attention,
        x: &Tensor,
        offset: usize,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, s, _) = x.dims3()?;
        let (nh, nkv, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        if offset + s > self.rope.max_positions() {
            return Err(Error::invalid(
                "sequence length",
                format!(
                    "{} positions exceed the model's context of {} (max_position_embeddings)",
                    offset + s,
                    self.rope.max_positions()
                ),
            ));
        }
        let heads = |t: Tensor, n: usize| -> candle_core::Result<Tensor> {
            t.reshape((b, s, n, d))?.transpose(1, 2)?.contiguous()
        };
        let q = heads(attn.q_proj.forward(x, ctx)?, nh)?;
        let k = heads(attn.k_proj.forward(x, ctx)?, nkv)?;
        let v = heads(attn.v_proj.forward(x, ctx)?, nkv)?;
        let q = rope(&q, &self.rope, offset)?;
        let mut k = rope(&k, &self.rope, offset)?;
        let mut v = v;
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *slot = Some((k.clone(), v.clone()));
        }
        // Grouped-query attention without repeating k and v: the query heads that share a key
        // head (adjacent, as in `repeat_kv`) are stacked as rows of one [groups·s, d] matrix per
        // key head, which saves two [b, heads, kv_len, d] copies and their gradients per layer.
        let groups = nh / nkv;
        let q = q.reshape((b, nkv, groups * s, d))?;
        let scores = q.matmul(&k.t()?)?; // [b, nkv, groups·s, kv_len]
        let probs = causal_softmax_grouped(&scores, 1.0 / (d as f64).sqrt(), offset, s)?;
        let out = probs.matmul(&v)?.reshape((b, nh, s, d))?;
        let out = out.transpose(1, 2)?.reshape((b, s, nh * d))?;
        Ok(attn.o_proj.forward(&out, ctx)?)
    }

    /// Final hidden states after the last norm, `[b, s, h]`. With a cache, `ids` are the new
    /// tokens only and positions continue from what is cached.
    pub fn forward_hidden(
        &self,
        ids: &Tensor,
        mut cache: Option<&mut KvCache>,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let offset = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        if let Some(c) = cache.as_mut() {
            if c.layers.len() != self.layers.len() {
                **c = KvCache::new(self.layers.len());
            }
        }
        let mut x = self.embed(ids)?;
        for n in 0..self.layers.len() {
            let slot = cache.as_mut().map(|c| &mut c.layers[n]);
            x = self.block_forward(n, &x, offset, slot, ctx)?;
        }
        self.final_norm(&x)
    }

    pub fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        Ok(rms_norm(
            x,
            &self.norm.to_dtype(DType::F32)?,
            self.config.rms_norm_eps,
        )?)
    }

    /// Projects hidden states to vocabulary logits.
    pub fn logits(&self, hidden: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        match &self.lm_head {
            Some(head) => Ok(head.forward(hidden, ctx)?),
            None => Ok(matmul_t(hidden, &self.embed_tokens)?),
        }
    }

    /// Logits for every position, `[b, s, vocab]` (the training path).
    pub fn forward(&self, ids: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let h = self.forward_hidden(ids, None, ctx)?;
        self.logits(&h, ctx)
    }

    /// Logits of the last position only, `[b, vocab]`, extending `cache` (the generation path).
    pub fn forward_step(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let ctx = ForwardCtx::default();
        let h = self.forward_hidden(ids, Some(cache), &ctx)?;
        let s = h.dim(1)?;
        let last = h.narrow(1, s - 1, 1)?.squeeze(1)?;
        self.logits(&last, &ctx)
    }

    /// Every tensor of the model by Hugging Face name, mutably: the hook for selective
    /// fine-tuning (turn chosen tensors into `Var`s) and for writing merged weights.
    /// LoRA adapters and NF4 bases are not included.
    pub fn named_tensors_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut out: Vec<(String, &mut Tensor)> = Vec::new();
        out.push(("model.embed_tokens.weight".into(), &mut self.embed_tokens));
        for (n, b) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{n}");
            out.push((
                format!("{p}.input_layernorm.weight"),
                &mut b.input_layernorm,
            ));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                &mut b.post_attention_layernorm,
            ));
            for (name, lin) in projections(&mut b.self_attn, &mut b.mlp) {
                push_linear(&mut out, &format!("{p}.{name}"), lin);
            }
        }
        out.push(("model.norm.weight".into(), &mut self.norm));
        if let Some(head) = self.lm_head.as_mut() {
            push_linear(&mut out, "lm_head", head);
        }
        out
    }

    /// Every linear layer of the blocks by module path (`model.layers.3.mlp.up_proj`).
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (n, b) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{n}");
            for (name, lin) in b.linears_mut() {
                out.push((format!("{p}.{name}"), lin));
            }
        }
        out
    }

    /// Replaces every NF4 base with its dequantized f32 weight (before merging or exporting:
    /// a merged model is never written back in 4 bits).
    pub fn dequantize_all(&mut self) -> Result<usize> {
        fn dequantize(lin: &mut Linear) -> Result<usize> {
            if let crate::model::linear::Base::Nf4(q) = &lin.base {
                lin.base = crate::model::linear::Base::Dense(q.dequantize()?);
                return Ok(1);
            }
            Ok(0)
        }
        let mut n = 0;
        for (_, lin) in self.linears_mut() {
            n += dequantize(lin)?;
        }
        if let Some(h) = self.lm_head.as_mut() {
            n += dequantize(h)?;
        }
        Ok(n)
    }

    /// Bytes held by base weights as stored (NF4 at its packed size).
    pub fn base_weight_bytes(&mut self) -> usize {
        let mut bytes: usize = self
            .named_tensors_mut()
            .iter()
            .map(|(_, t)| t.elem_count() * t.dtype().size_in_bytes())
            .sum();
        for (_, lin) in self.linears_mut() {
            if let crate::model::linear::Base::Nf4(q) = &lin.base {
                bytes += q.storage_bytes();
            }
        }
        if let Some(crate::model::linear::Base::Nf4(q)) = self.lm_head.as_ref().map(|h| &h.base) {
            bytes += q.storage_bytes();
        }
        bytes
    }

    /// How the base linears are stored right now (see [`StorageReport`]).
    pub fn storage_report(&self) -> StorageReport {
        let mut d = self.clone();
        let mut r = StorageReport::default();
        let mut count = |lin: &Linear| {
            match &lin.base {
                crate::model::linear::Base::Nf4(_) => r.nf4_linears += 1,
                crate::model::linear::Base::Dense(w) if w.is_variable() => r.trainable_linears += 1,
                crate::model::linear::Base::Dense(_) => r.dense_linears += 1,
            }
            r.adapted_linears += lin.lora.is_some() as usize;
        };
        for (_, lin) in d.linears_mut() {
            count(lin);
        }
        if let Some(h) = &d.lm_head {
            count(h);
        }
        r.base_bytes = d.base_weight_bytes() as u64;
        r
    }

    /// Checks that `src` has every tensor this config needs, with the right shape, without
    /// reading any weight (the model step validates a model this way when it is opened).
    ///
    /// # Errors
    /// [`Error::Tensor`] naming the file and the first tensor that is missing or mis-shaped.
    pub fn check(config: &Config, src: &dyn TensorSource) -> Result<()> {
        Self::load(config, &ShapesOnly(src), &LoadOptions::default()).map(|_| ())
    }

    /// A copy whose every tensor (base weights, LoRA `A`/`B`) is detached from the training
    /// variables: it shares their storage (no copy) but a forward through it records no graph.
    /// Evaluation runs on this, so a validation pass keeps no activations.
    pub fn detached(&self) -> Decoder {
        let mut d = self.clone();
        for (_, t) in d.named_tensors_mut() {
            *t = t.detach();
        }
        let detach_lora = |lin: &mut Linear| {
            if let Some(l) = lin.lora.as_mut() {
                l.a = l.a.detach();
                l.b = l.b.detach();
            }
        };
        for (_, lin) in d.linears_mut() {
            detach_lora(lin);
        }
        if let Some(h) = d.lm_head.as_mut() {
            detach_lora(h);
        }
        d
    }

    /// Total parameter count (tied embeddings counted once), as Hugging Face reports it.
    pub fn num_parameters(&self) -> usize {
        crate::model::count::parameter_count(&self.config)
    }
}

/// A source that answers every tensor with zeros of its shape without allocating them (a
/// broadcast scalar), so [`Decoder::check`] runs the real loader's name and shape checks.
struct ShapesOnly<'a>(&'a dyn TensorSource);

impl TensorSource for ShapesOnly<'_> {
    fn names(&self) -> Vec<String> {
        self.0.names()
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.0.shape(name)
    }
    fn load(&self, name: &str) -> Result<Tensor> {
        let shape = self.0.shape(name).ok_or_else(|| Error::Tensor {
            file: self.0.label(),
            tensor: name.into(),
            message: "missing".into(),
        })?;
        Ok(Tensor::zeros((), DType::F32, &Device::Cpu)?.broadcast_as(shape)?)
    }
    fn label(&self) -> String {
        self.0.label()
    }
    fn dtype_summary(&self) -> String {
        self.0.dtype_summary()
    }
}

fn push_linear<'a>(out: &mut Vec<(String, &'a mut Tensor)>, path: &str, lin: &'a mut Linear) {
    // NF4 bases (QLoRA) are frozen and not listed; `dequantize_all` first to export them.
    if let crate::model::linear::Base::Dense(w) = &mut lin.base {
        out.push((format!("{path}.weight"), w));
    }
    if let Some(b) = lin.bias.as_mut() {
        out.push((format!("{path}.bias"), b));
    }
}

/// Logits → mean negative log-likelihood over positions where `weights > 0`.
/// `logits: [n, vocab]`, `targets: [n]` (u32), `weights: [n]` (f32, 0 or 1).
pub fn masked_cross_entropy(logits: &Tensor, targets: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
    let total = weights.sum_all()?.to_scalar::<f32>()?;
    if total <= 0.0 {
        return Err(Error::invalid(
            "batch",
            "no trained tokens in this batch (every target is masked)",
        ));
    }
    Ok((picked.mul(weights)?.sum_all()?.neg()? / total as f64)?)
}
