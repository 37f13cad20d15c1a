//! Our decoder for every supported family (Llama 2/3.x, SmolLM, Mistral, Qwen2, Qwen3, Gemma 3
//! text, Phi-3/4-mini), built for training. The block itself is in [`crate::model::block`];
//! what differs per family is data in [`crate::model::family`].
//!
//! Differences from `candle_transformers::models::llama`, and why:
//! - it returns logits for every position (training needs them all);
//! - it is built only from ops with a backward pass (`crate::ops` supplies fused ones where
//!   candle's have none), so gradients reach every adapter;
//! - its linear layers are public [`Linear`]s that LoRA/QLoRA wrap, and its tensors keep
//!   Hugging Face names so adapters and exports interoperate.
//!
//! Shapes: ids `[b, s]` → hidden `[b, s, h]` → logits `[b, s, vocab]`. Attention:
//! q `[b, heads, s, d]`, k/v `[b, kv_heads, t, d]` with `t = cached + s`, grouped-query heads
//! stacked per key head. Compute is f32; base weights may be stored bf16 (widened per matmul)
//! or NF4. Gemma scales embeddings by √hidden; a config's `final_logit_softcapping` caps the
//! logits with `cap·tanh(z/cap)` (candle's tanh has a backward).

use crate::error::{Error, Result};
use crate::model::block::{norm, projections, BlockCtx};
pub use crate::model::block::{Attention, Block, GateUpProj, Mlp, QkvProj};
use crate::model::config::Config;
use crate::model::ctx::ForwardCtx;
use crate::model::linear::{matmul_t_with, Linear};
use crate::model::rope_scaling::RopeScaling;
use crate::model::tensors::TensorSource;
use crate::ops::{OpPath, RopeTables};
use crate::quant::ggml::GgmlWeight;
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
    /// Keep tensors a GGUF file stores in a block type (`Q4_1`, `Q4_K`, …) in that type, with
    /// the embedding (and a tied head) too: memory about the file size, for generation only
    /// (`quant::ggml`). Float tensors and other sources load as `dtype`; ignored with
    /// `quantize`.
    #[serde(default)]
    pub keep_gguf_types: bool,
    /// Dense matrices (block linears, the embedding and the head) quantized to Q8_0 as they
    /// load, for generation: a quarter of f32's bytes through candle's Q8_0 kernels. A GGUF's
    /// own block types are kept as they are when `keep_gguf_types` is also set. Ignored with
    /// `quantize`.
    #[serde(default)]
    pub q8_0: bool,
}

impl LoadOptions {
    /// Dense weights in `dtype`.
    pub fn dense(dtype: WeightDtype) -> Self {
        Self {
            dtype,
            quantize: None,
            keep_gguf_types: false,
            q8_0: false,
        }
    }

    /// A GGUF file's block types kept as they are (generation), float tensors in `dtype`.
    pub fn gguf_types(dtype: WeightDtype) -> Self {
        Self {
            keep_gguf_types: true,
            ..Self::dense(dtype)
        }
    }

    /// Block linears in NF4 with double quantization (QLoRA's base), other tensors in `dtype`.
    pub fn nf4(dtype: WeightDtype) -> Self {
        Self {
            dtype,
            quantize: Some(QuantizeOptions::default()),
            keep_gguf_types: false,
            q8_0: false,
        }
    }

    /// Dense matrices quantized to Q8_0 for generation, other tensors in f32.
    pub fn q8_0() -> Self {
        Self {
            q8_0: true,
            ..Self::dense(WeightDtype::F32)
        }
    }

    /// `f32`, `bf16`, `nf4` or `nf4+bf16`, for messages and run records.
    pub fn describe(&self) -> String {
        let dense = match self.dtype {
            WeightDtype::F32 => "f32",
            WeightDtype::Bf16 => "bf16",
        };
        match (self.quantize, self.dtype) {
            (None, _) if self.keep_gguf_types && self.q8_0 => format!("gguf-types+q8_0+{dense}"),
            (None, _) if self.keep_gguf_types => format!("gguf-types+{dense}"),
            (None, _) if self.q8_0 => format!("q8_0+{dense}"),
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
    /// Linear layers kept in a GGUF file's block type (generation, and QLoRA over the file's
    /// own quantization).
    #[serde(default)]
    pub gguf_linears: usize,
    /// Linear layers whose base weight trains (full or selective fine-tuning).
    pub trainable_linears: usize,
    /// Linear layers carrying a LoRA adapter.
    pub adapted_linears: usize,
    /// Bytes of base weights as stored (NF4 at its packed size).
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub base_bytes: u64,
    /// Where the weights live (`cpu`, `cuda:0`, `metal`) and the activations' dtype (`f32`,
    /// `bf16`); set by `model::placement` for a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub compute_dtype: Option<String>,
}

pub use crate::model::kv_cache::{KvCache, KvSlot};

/// The whole decoder.
#[derive(Clone)]
pub struct Decoder {
    pub config: Config,
    /// `[vocab, h]`. While `embed_q` holds the embedding this is a zero-stride placeholder of
    /// the right shape (no memory); [`Decoder::dequantize_all`] fills it in.
    pub embed_tokens: Tensor,
    /// The embedding (and a tied head) in a GGUF block type (`LoadOptions::keep_gguf_types`).
    pub embed_q: Option<std::sync::Arc<GgmlWeight>>,
    pub layers: Vec<Block>,
    pub norm: Tensor,
    /// `None` when the output projection is tied to `embed_tokens`.
    pub lm_head: Option<Linear>,
    pub(crate) rope: RopeTables,
    /// Gemma 3's sliding-window layers use their own (unscaled) RoPE base.
    pub(crate) rope_local: Option<RopeTables>,
    /// The activations' dtype: f32 on the CPU, bf16 by default on a GPU (`model::placement`).
    pub(crate) compute: DType,
}

struct Loader<'a> {
    src: &'a dyn TensorSource,
    dtype: WeightDtype,
    quantize: Option<QuantizeOptions>,
    keep_gguf_types: bool,
    q8_0: bool,
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

    /// The tensor in its GGUF block type, when kept that way (checked shape first).
    fn get_ggml(&self, name: &str, shape: &[usize]) -> Result<Option<GgmlWeight>> {
        if !(self.keep_gguf_types || self.q8_0) || self.quantize.is_some() || shape.len() != 2 {
            return Ok(None);
        }
        if self.src.shape(name).as_deref() != Some(shape) {
            return Ok(None); // `get_f32` reports the mismatch
        }
        let err = |c: candle_core::Error| Error::Tensor {
            file: self.src.label(),
            tensor: name.into(),
            message: c.to_string(),
        };
        if self.keep_gguf_types {
            if let Some(q) = self.src.load_ggml(name)? {
                return GgmlWeight::new(q).map(Some).map_err(err);
            }
        }
        // Q8_0 rows are whole 32-blocks; a matrix whose rows are not stays dense.
        if !self.q8_0 || !shape[1].is_multiple_of(32) {
            return Ok(None);
        }
        let f = self.get_f32(name, shape)?;
        GgmlWeight::quantize(&f, candle_core::quantized::GgmlDType::Q8_0)
            .map(Some)
            .map_err(err)
    }

    fn linear(&self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let b = |l: &Self| -> Result<Option<Tensor>> {
            bias.then(|| l.get(&format!("{prefix}.bias"), &[out]))
                .transpose()
        };
        if let Some(q) = self.get_ggml(&format!("{prefix}.weight"), &[out, inp])? {
            return Ok(Linear {
                base: crate::model::linear::Base::Ggml(std::sync::Arc::new(q)),
                bias: b(self)?,
                lora: None,
                merged: false,
            });
        }
        let quantize = self.quantize.filter(|q| prefix != "lm_head" || q.lm_head);
        let w = match quantize {
            Some(q) => {
                let name = format!("{prefix}.weight");
                let f32w = self.get_f32(&name, &[out, inp])?;
                let nf4 = crate::quant::nf4::Nf4Tensor::from_tensor(&name, &f32w, q.double_quant)?;
                return Ok(Linear {
                    base: crate::model::linear::Base::Nf4(std::sync::Arc::new(nf4)),
                    bias: b(self)?,
                    lora: None,
                    merged: false,
                });
            }
            None => self.get(&format!("{prefix}.weight"), &[out, inp])?,
        };
        Ok(Linear::dense(w, b(self)?))
    }
}

impl Loader<'_> {
    /// One block `p` (`model.layers.N`) with the parts the family has.
    fn block(&self, c: &Config, p: &str) -> Result<Block> {
        let fam = c.family();
        let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let norm = |name: &str, n: usize| self.get(&format!("{p}.{name}.weight"), &[n]);
        let opt_norm = |on: bool, name: &str, n: usize| on.then(|| norm(name, n)).transpose();
        let qkv = if fam.fused_qkv {
            let out = c.q_dim() + 2 * c.kv_dim();
            QkvProj::Fused {
                qkv_proj: self.linear(&format!("{p}.self_attn.qkv_proj"), out, h, c.qkv_bias)?,
            }
        } else {
            let lin = |name: &str, out: usize| {
                self.linear(&format!("{p}.self_attn.{name}"), out, h, c.qkv_bias)
            };
            QkvProj::Split {
                q_proj: lin("q_proj", c.q_dim())?,
                k_proj: lin("k_proj", c.kv_dim())?,
                v_proj: lin("v_proj", c.kv_dim())?,
            }
        };
        let gate_up = if fam.fused_gate_up {
            GateUpProj::Fused {
                gate_up_proj: self.linear(
                    &format!("{p}.mlp.gate_up_proj"),
                    2 * i,
                    h,
                    c.mlp_bias,
                )?,
            }
        } else {
            GateUpProj::Split {
                gate_proj: self.linear(&format!("{p}.mlp.gate_proj"), i, h, c.mlp_bias)?,
                up_proj: self.linear(&format!("{p}.mlp.up_proj"), i, h, c.mlp_bias)?,
            }
        };
        Ok(Block {
            input_layernorm: norm("input_layernorm", h)?,
            self_attn: Attention {
                qkv,
                o_proj: self.linear(&format!("{p}.self_attn.o_proj"), h, c.q_dim(), c.o_bias)?,
                q_norm: opt_norm(fam.qk_norm, "self_attn.q_norm", d)?,
                k_norm: opt_norm(fam.qk_norm, "self_attn.k_norm", d)?,
            },
            post_attention_layernorm: norm("post_attention_layernorm", h)?,
            pre_feedforward_layernorm: opt_norm(
                fam.sandwich_norms,
                "pre_feedforward_layernorm",
                h,
            )?,
            post_feedforward_layernorm: opt_norm(
                fam.sandwich_norms,
                "post_feedforward_layernorm",
                h,
            )?,
            mlp: Mlp {
                gate_up,
                down_proj: self.linear(&format!("{p}.mlp.down_proj"), h, i, c.mlp_bias)?,
            },
        })
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
            keep_gguf_types: opts.keep_gguf_types,
            q8_0: opts.q8_0,
        };
        let h = c.hidden_size;
        let embed_name = "model.embed_tokens.weight";
        let embed_q = l.get_ggml(embed_name, &[c.vocab_size, h])?;
        let embed_tokens = match &embed_q {
            Some(_) => {
                Tensor::zeros((), DType::F32, &Device::Cpu)?.broadcast_as((c.vocab_size, h))?
            }
            None => l.get(embed_name, &[c.vocab_size, h])?,
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for n in 0..c.num_hidden_layers {
            layers.push(l.block(c, &format!("model.layers.{n}"))?);
        }
        let norm = l.get("model.norm.weight", &[h])?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(l.linear("lm_head", c.vocab_size, h, false)?)
        };
        let mut d = Self::from_parts(c.clone(), embed_tokens, layers, norm, lm_head)?;
        d.embed_q = embed_q.map(std::sync::Arc::new);
        Ok(d)
    }

    pub fn from_parts(
        config: Config,
        embed_tokens: Tensor,
        layers: Vec<Block>,
        norm: Tensor,
        lm_head: Option<Linear>,
    ) -> Result<Self> {
        let c = &config;
        let scaling = c.rope_scaling.as_ref();
        let rot = c.rotary_dim();
        // Bounded: a header declaring 16M positions must not build gigabytes of tables.
        let positions = RopeScaling::position_limit(scaling, c.max_position_embeddings)
            .min(crate::limits::MAX_ROPE_POSITIONS);
        let rope = RopeTables::from_inv_freq(
            &RopeScaling::inv_freq(scaling, c.rope_theta, rot),
            positions,
            RopeScaling::attention_factor(scaling),
            embed_tokens.device(),
        )?;
        let rope_local = match c.rope_local_theta {
            Some(base) => Some(RopeTables::new(
                rot,
                base,
                positions,
                embed_tokens.device(),
            )?),
            None => None,
        };
        Ok(Self {
            config,
            embed_tokens,
            embed_q: None,
            layers,
            norm,
            lm_head,
            rope,
            rope_local,
            compute: DType::F32,
        })
    }

    /// Token embeddings, `[b, s] → [b, s, h]`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        let e = match &self.embed_q {
            Some(q) => q.rows(&flat)?,
            None => self.embed_tokens.index_select(&flat, 0)?,
        };
        let e = e.to_dtype(self.compute)?;
        let e = e.reshape((b, s, self.config.hidden_size))?;
        if self.config.family().scale_embeddings {
            return Ok((e * (self.config.hidden_size as f64).sqrt())?);
        }
        Ok(e)
    }

    /// Runs one decoder block on `x: [b, s, h]` at absolute positions `offset..offset+s`.
    pub fn block_forward(
        &self,
        n: usize,
        x: &Tensor,
        offset: usize,
        cache: Option<&mut Option<KvSlot>>,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let c = &self.config;
        let rope = match (&self.rope_local, c.layer_window(n)) {
            (Some(local), Some(_)) => local,
            _ => &self.rope,
        };
        let bc = BlockCtx {
            config: c,
            layer: n,
            rope,
            offset,
            ctx,
        };
        self.layers[n].forward(x, &bc, cache)
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
        self.final_norm_with(ctx.ops, &x)
    }

    pub fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        self.final_norm_with(OpPath::Auto, x)
    }

    /// [`Decoder::final_norm`] through the kernels `ops` picks.
    pub fn final_norm_with(&self, ops: OpPath, x: &Tensor) -> Result<Tensor> {
        norm(&self.config, ops, x, &self.norm)
    }

    /// Projects hidden states to vocabulary logits (soft-capped when the config says so).
    pub fn logits(&self, hidden: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let z = match &self.lm_head {
            Some(head) => head.forward(hidden, ctx)?,
            None => match &self.embed_q {
                // Training needs the gradient to the hidden states: the tiled op.
                Some(q) if ctx.train => q.forward_train(hidden)?,
                Some(q) => q.forward(hidden)?,
                None => matmul_t_with(ctx.ops, hidden, &self.embed_tokens)?,
            },
        };
        match self.config.final_logit_softcapping {
            Some(cap) => Ok(((z / cap)?.tanh()? * cap)?),
            None => Ok(z),
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
            let Block {
                input_layernorm,
                self_attn,
                post_attention_layernorm,
                pre_feedforward_layernorm,
                post_feedforward_layernorm,
                mlp,
            } = b;
            out.push((format!("{p}.input_layernorm.weight"), input_layernorm));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                post_attention_layernorm,
            ));
            if let Some(t) = pre_feedforward_layernorm.as_mut() {
                out.push((format!("{p}.pre_feedforward_layernorm.weight"), t));
            }
            if let Some(t) = post_feedforward_layernorm.as_mut() {
                out.push((format!("{p}.post_feedforward_layernorm.weight"), t));
            }
            let Attention {
                qkv,
                o_proj,
                q_norm,
                k_norm,
            } = self_attn;
            if let Some(t) = q_norm.as_mut() {
                out.push((format!("{p}.self_attn.q_norm.weight"), t));
            }
            if let Some(t) = k_norm.as_mut() {
                out.push((format!("{p}.self_attn.k_norm.weight"), t));
            }
            let Mlp { gate_up, down_proj } = mlp;
            for (name, lin) in projections(qkv, o_proj, gate_up, down_proj) {
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

    /// Replaces every NF4 or GGUF-typed base (and a GGUF-typed embedding) with its
    /// dequantized f32 weight (before merging, exporting or training: a merged model is never
    /// written back in 4 bits).
    pub fn dequantize_all(&mut self) -> Result<usize> {
        fn dequantize(lin: &mut Linear) -> Result<usize> {
            use crate::model::linear::Base;
            match &lin.base {
                Base::Nf4(_) | Base::Ggml(_) => {
                    lin.base = Base::Dense(lin.dense_weight()?);
                    Ok(1)
                }
                Base::Dense(_) => Ok(0),
            }
        }
        let mut n = 0;
        if let Some(q) = self.embed_q.take() {
            self.embed_tokens = q.dequantize()?;
        }
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
        use crate::model::linear::Base;
        let placeholder = self.embed_q.is_some();
        let mut bytes: usize = self
            .named_tensors_mut()
            .iter()
            .filter(|(n, _)| !(placeholder && n == "model.embed_tokens.weight"))
            .map(|(_, t)| t.elem_count() * t.dtype().size_in_bytes())
            .sum();
        bytes += self.embed_q.as_ref().map_or(0, |q| q.storage_bytes());
        let packed = |lin: &Linear| match &lin.base {
            Base::Nf4(q) => q.storage_bytes(),
            Base::Ggml(q) => q.storage_bytes(),
            Base::Dense(_) => 0,
        };
        for (_, lin) in self.linears_mut() {
            bytes += packed(lin);
        }
        bytes += self.lm_head.as_ref().map_or(0, packed);
        bytes
    }

    /// How the base linears are stored right now (see [`StorageReport`]).
    pub fn storage_report(&self) -> StorageReport {
        let mut d = self.clone();
        let mut r = StorageReport::default();
        let mut count = |lin: &Linear| {
            match &lin.base {
                crate::model::linear::Base::Nf4(_) => r.nf4_linears += 1,
                crate::model::linear::Base::Ggml(_) => r.gguf_linears += 1,
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
