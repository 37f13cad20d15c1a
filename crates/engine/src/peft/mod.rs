//! Parameter-efficient fine-tuning: the methods and what each trains (`method`), fresh LoRA
//! adapters (`lora`), adapter files in PEFT's format
//! (`adapter_config`, `adapter_io`), other trainers' adapters (`adapter_import`, `adapter_summary`). The adapter layer
//! itself is part of the model (`model::lora`); NF4 storage is `quant`.

pub mod adapter_config;
pub mod adapter_import;
pub mod adapter_io;
pub mod adapter_summary;
pub mod lora;
pub mod method;
