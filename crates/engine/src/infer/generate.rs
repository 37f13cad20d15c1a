//! Text generation with a KV cache: greedy or sampled (temperature, top-k, top-p, repetition
//! penalty, seed — sampling is candle-transformers' `LogitsProcessor`), stopping on any
//! end-of-generation id, streaming text that never splits a UTF-8 character, cancellable.

use crate::error::{Error, Result};
use crate::model::decoder::{Decoder, KvCache};
use crate::tokenizer::Tokenizer;
use candle_core::{DType, Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Sampling settings. `temperature == 0` means greedy.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub temperature: f64,
    /// Keep only the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1.0 = off).
    pub top_p: f64,
    /// > 1 discourages repeating tokens seen in the last `repeat_last_n` (1.0 = off).
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub seed: u64,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            temperature: 0.7,
            top_k: 40,
            top_p: 0.95,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 42,
        }
    }
}

impl GenerateOptions {
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }

    fn sampling(&self) -> Sampling {
        let t = self.temperature;
        if t <= 0.0 {
            return Sampling::ArgMax;
        }
        match (self.top_k > 0, self.top_p < 1.0) {
            (true, true) => Sampling::TopKThenTopP {
                k: self.top_k,
                p: self.top_p,
                temperature: t,
            },
            (true, false) => Sampling::TopK {
                k: self.top_k,
                temperature: t,
            },
            (false, true) => Sampling::TopP {
                p: self.top_p,
                temperature: t,
            },
            (false, false) => Sampling::All { temperature: t },
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    EndOfText,
    MaxTokens,
    ContextFull,
    Cancelled,
}

/// What [`generate`] produced.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Generation {
    pub text: String,
    /// Generated ids only (not the prompt; not the stop token).
    pub token_ids: Vec<u32>,
    pub prompt_tokens: usize,
    pub stop: StopReason,
    /// Prompt processing speed.
    pub prompt_tokens_per_s: f64,
    /// Generation speed (tokens after the first, per second of decoding).
    pub tokens_per_s: f64,
}

/// Turns a growing list of ids into text pieces that never end inside a UTF-8 character
/// or a byte-fallback sequence: text is emitted only once it decodes without a trailing
/// replacement character.
///
/// Decoding starts from a few prompt tokens of context, because decoders treat the first
/// token specially (SentencePiece drops its leading space): "Tom had" + "▁a" must stream
/// " a", not "a".
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    /// Length of the decoded context prefix, in bytes.
    prefix_len: usize,
    prefix_tokens: usize,
    emitted: String,
}

/// Prompt tokens kept as decoding context.
const CONTEXT_TOKENS: usize = 4;

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            prefix_len: 0,
            prefix_tokens: 0,
            emitted: String::new(),
        }
    }

    /// A stream that continues `prompt` (only new text is emitted).
    pub fn after(tokenizer: &'a Tokenizer, prompt: &[u32]) -> Result<Self> {
        let ctx = prompt[prompt.len().saturating_sub(CONTEXT_TOKENS)..].to_vec();
        let prefix = tokenizer.decode(&ctx, true)?;
        Ok(Self {
            tokenizer,
            prefix_tokens: ctx.len(),
            ids: ctx,
            prefix_len: prefix.len(),
            emitted: String::new(),
        })
    }

    fn decoded(&self) -> Result<Option<String>> {
        let text = self.tokenizer.decode(&self.ids, true)?;
        Ok(text.get(self.prefix_len..).map(String::from))
    }

    /// Adds one id; returns newly complete text, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let Some(text) = self.decoded()? else {
            return Ok(None);
        };
        if text.ends_with('\u{FFFD}') || !text.starts_with(&self.emitted) {
            return Ok(None);
        }
        let new = text[self.emitted.len()..].to_string();
        self.emitted = text;
        Ok((!new.is_empty()).then_some(new))
    }

    /// Everything decoded (including a trailing partial character, if generation stopped there).
    pub fn finish(&mut self) -> Result<Option<String>> {
        let Some(text) = self.decoded()? else {
            return Ok(None);
        };
        if text.len() > self.emitted.len() && text.starts_with(&self.emitted) {
            let new = text[self.emitted.len()..].to_string();
            self.emitted = text;
            return Ok(Some(new));
        }
        Ok(None)
    }

    pub fn text(&self) -> &str {
        &self.emitted
    }

    /// Generated ids so far (without the context prefix).
    pub fn generated(&self) -> &[u32] {
        &self.ids[self.prefix_tokens..]
    }
}

/// Generates from `prompt_ids`, streaming text pieces to `on_text` (called on the thread that
/// runs the loop, a thread of its own pool; the caller's thread waits meanwhile).
///
/// Stops on any id in `stop_ids`, after `max_new_tokens`, at the model's context length,
/// or when `cancel` becomes true (checked before every token).
///
/// # Errors
/// An empty prompt, or a compute failure.
pub fn generate(
    model: &Decoder,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    stop_ids: &[u32],
    cancel: Option<&AtomicBool>,
    on_text: &mut (dyn FnMut(&str) + Send),
) -> Result<Generation> {
    // On a thread pool of its own, as training's loop (`runtime::on_own_pool`). SmolLM2's GGUF
    // (`peft bench generate`, 2 cores, two alternating pairs): prefill 388–395 → 507–554
    // tokens/s, decode in f32 29.9–31.8 → 33.8–35.7; decode in the GGUF's types unchanged.
    crate::runtime::on_own_pool(|| {
        generate_here(
            model, tokenizer, prompt_ids, opts, stop_ids, cancel, on_text,
        )
    })
}

/// [`generate`] on the calling thread.
fn generate_here(
    model: &Decoder,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    stop_ids: &[u32],
    cancel: Option<&AtomicBool>,
    on_text: &mut (dyn FnMut(&str) + Send),
) -> Result<Generation> {
    if prompt_ids.is_empty() {
        return Err(Error::invalid(
            "prompt",
            "no prompt tokens (and the model has no BOS token to start from)",
        ));
    }
    let context = (model.config.max_position_embeddings).min(crate::limits::MAX_ROPE_POSITIONS);
    if prompt_ids.len() >= context {
        return Err(Error::invalid(
            "prompt",
            format!(
                "{} tokens do not fit the model's context of {context}",
                prompt_ids.len()
            ),
        ));
    }
    let mut sampler = LogitsProcessor::from_sampling(opts.seed, opts.sampling());
    let mut cache = KvCache::new(model.layers.len());
    let mut stream = TextStream::after(tokenizer, prompt_ids)?;
    let mut all: Vec<u32> = prompt_ids.to_vec();
    let mut generated = Vec::new();
    let mut stop = StopReason::MaxTokens;

    let t0 = Instant::now();
    // Ids go to the model's device; each step's logits come back for sampling (one row).
    let input = Tensor::new(prompt_ids, model.device())?.unsqueeze(0)?;
    let mut logits = model.forward_step(&input, &mut cache)?;
    let prompt_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for i in 0..opts.max_new_tokens {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            stop = StopReason::Cancelled;
            break;
        }
        let mut l = logits
            .squeeze(0)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?;
        if opts.repeat_penalty != 1.0 {
            let start = all.len().saturating_sub(opts.repeat_last_n);
            l = candle_transformers::utils::apply_repeat_penalty(
                &l,
                opts.repeat_penalty,
                &all[start..],
            )?;
        }
        let next = sampler.sample(&l)?;
        if stop_ids.contains(&next) {
            stop = StopReason::EndOfText;
            break;
        }
        all.push(next);
        generated.push(next);
        if let Some(piece) = stream.push(next)? {
            on_text(&piece);
        }
        if i + 1 == opts.max_new_tokens {
            break;
        }
        if all.len() >= context {
            stop = StopReason::ContextFull;
            break;
        }
        let input = Tensor::new(&[next], model.device())?.unsqueeze(0)?;
        logits = model.forward_step(&input, &mut cache)?;
    }
    if let Some(rest) = stream.finish()? {
        on_text(&rest);
    }
    let decode_s = t1.elapsed().as_secs_f64();
    Ok(Generation {
        text: stream.text().to_string(),
        prompt_tokens: prompt_ids.len(),
        prompt_tokens_per_s: prompt_ids.len() as f64 / prompt_s.max(1e-9),
        tokens_per_s: generated.len() as f64 / decode_s.max(1e-9),
        token_ids: generated,
        stop,
    })
}
