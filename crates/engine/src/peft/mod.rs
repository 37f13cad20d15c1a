//! Parameter-efficient fine-tuning: LoRA, QLoRA (NF4), selective.

pub mod lora;
pub mod nf4;
pub mod nf4_op;
