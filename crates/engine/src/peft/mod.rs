//! Parameter-efficient fine-tuning: the methods and what each trains (`method`), fresh LoRA
//! adapters (`lora`), and adapter files in PEFT's format (`adapter_io`). The adapter layer
//! itself is part of the model (`model::lora`); NF4 storage is `quant`.

pub mod adapter_io;
pub mod lora;
pub mod method;
