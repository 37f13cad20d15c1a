//! PEFT Studio's engine: everything that is not user interface — model loading (folder,
//! Hugging Face hub, GGUF), our trainable Llama-family decoder, generation, parameter-efficient
//! fine-tuning (selective, LoRA, QLoRA), data, planning and export. Front ends (the `peft` CLI,
//! the desktop app) are thin layers over these calls.

pub mod error;
pub mod export;
pub mod fsutil;
pub mod model;
pub mod ops;
pub mod tokenizer;
pub mod infer;
pub mod memory;
pub mod data;
pub mod peft;
pub mod train;
pub mod hardware;
pub mod plan;

pub use error::{Error, Result};
pub use model::config::{Arch, Config};
pub use tokenizer::Tokenizer;
