//! Structured fuzzing of everything a user opens: GGUF, safetensors (and shard indexes),
//! `config.json`, `adapter_config.json`, `tokenizer.json`, chat templates and datasets.
//! Seeded and bounded, so it runs in `cargo test`; `make fuzz` runs many more cases
//! (`PEFT_FUZZ_CASES`). Every case must end in `Ok` or an error naming the file (and field or
//! line); a panic anywhere — even one caught inside the engine — fails the family.

mod configs;
mod data;
mod gguf;
mod harness;
mod safetensors;
mod template;
mod tokenizer;
