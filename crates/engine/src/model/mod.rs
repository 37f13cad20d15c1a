//! Model configuration, weights sources, loading and the decoder.

pub mod config;
pub mod gguf;
pub mod hub;
pub mod tensors;
