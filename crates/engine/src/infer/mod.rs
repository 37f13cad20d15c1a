//! Generation: KV-cached decoding, sampling and streaming text.

pub mod generate;
