//! PEFT Studio's engine: everything that is not user interface — model loading (folder,
//! Hugging Face hub, GGUF), our trainable Llama-family decoder, generation, parameter-efficient
//! fine-tuning (selective, LoRA, QLoRA), data, planning and export. Front ends (the `peft` CLI,
//! the desktop app) are thin layers over these calls.
//!
//! Layers, each depending only on those before it (`tests/layers.rs` checks this):
//! 1. `error`, `fsutil`, `memory`, `runtime`, `seed` — utilities;
//! 2. `ops` (fused CPU kernels with their own backward), `tokenizer`, `template` (chat templates);
//! 3. `quant` (NF4), `hardware` (detection only);
//! 4. `model` (configs, weights sources, the decoder and its layers, loading);
//! 5. `data` (formats, rendering with loss masks, batches), `infer` (generation);
//! 6. `peft` (methods, fresh adapters, adapter files), `export` (merged folders);
//! 7. `plan` (pure estimates and recommendations);
//! 8. `train` (the recipe, its settings and run records).

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
pub mod quant;
pub mod runtime;
pub mod seed;
pub mod template;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};
pub use model::config::{Arch, Config};
pub use tokenizer::Tokenizer;
