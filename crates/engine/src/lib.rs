//! PEFT Studio's engine: everything that is not user interface — model loading (folder,
//! Hugging Face hub, GGUF), our trainable Llama-family decoder, generation, parameter-efficient
//! fine-tuning (selective, LoRA, QLoRA), data, planning and export. Front ends (the `peft` CLI,
//! the desktop app) are thin layers over these calls.

pub mod data;
pub mod error;
pub mod export;
pub mod fsutil;
pub mod hardware;
pub mod infer;
pub mod memory;
pub mod model;
pub mod ops;
pub mod peft;
pub mod plan;
pub mod runtime;
pub mod scaleout;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};
pub use model::config::{Arch, Config};
pub use tokenizer::Tokenizer;
