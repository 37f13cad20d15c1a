//! Model configuration, weights sources, loading and the decoder.

pub mod block;
pub mod config;
pub mod count;
pub mod ctx;
pub mod decoder;
pub mod family;
pub mod gguf;
pub mod gguf_arch;
pub mod gguf_family;
pub mod gguf_pretok;
pub mod gguf_tokenizer;
pub mod hub;
pub mod kv_cache;
pub mod linear;
pub mod load;
pub mod loaded;
pub mod lora;
pub mod placement;
pub mod rope_scaling;
pub mod tensors;
