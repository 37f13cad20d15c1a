//! Parameter-efficient fine-tuning: LoRA, QLoRA (NF4), selective.

pub mod adapter_import;
pub mod adapter_io;
pub mod adapter_summary;
pub mod lora;
pub mod lora_linear_op;
pub mod lora_op;
pub mod method;
pub mod nf4;
pub mod nf4_op;
