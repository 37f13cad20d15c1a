//! Parameter-efficient fine-tuning: LoRA, QLoRA (NF4), selective.

pub mod nf4;
