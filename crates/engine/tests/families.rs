//! The model families beyond Llama 2 (Llama 3.x RoPE scaling, Qwen3, Gemma 3 text, Phi-3/4):
//! parity with candle-transformers' models on random weights at every position, KV-cache
//! decoding, parity with transformers + peft on committed fixtures (base and LoRA logits),
//! LoRA gradients against finite differences, checkpointing and QLoRA per family, exact
//! parameter counts, config export round trips, GGUF name mapping, and the real chat templates
//! rendered as transformers renders them.
//!
//! Fixtures (`tests/fixtures/family_*`, `tests/fixtures/templates`) were written once by
//! `scripts/make_family_fixtures.py`; the tests never run Python.

#[path = "families/common.rs"]
mod common;
#[path = "families/fixtures.rs"]
mod fixtures;
#[path = "families/gguf.rs"]
mod gguf;
#[path = "families/parity.rs"]
mod parity;
#[path = "families/templates.rs"]
mod templates;
#[path = "families/train.rs"]
mod train;
