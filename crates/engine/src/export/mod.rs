//! Exports: merged Hugging Face folders (`merge`), merged GGUF files (`gguf`, with
//! `gguf_writer`, `gguf_quant`, `gguf_vocab`), LoRA adapters as GGUF (`lora_gguf`), Ollama and
//! LM Studio layouts (`ollama`, `ollama_template`, `go_template`), the self-check every export
//! ends with (`selfcheck`), and one call per format (`run`).

pub mod gguf;
pub mod gguf_quant;
pub mod gguf_vocab;
pub mod gguf_writer;
pub mod go_template;
pub mod lora_gguf;
pub mod merge;
pub mod ollama;
pub mod ollama_template;
pub mod run;
pub mod selfcheck;
