//! Shared helpers for the training tests: the bundled model and small datasets on disk.
#![allow(dead_code)]

use peft_engine::model::decoder::{Decoder, LoadOptions};
use peft_engine::model::load::{ModelSource, OpenOptions};
use peft_engine::model::loaded::LoadedModel;
use std::path::{Path, PathBuf};

/// The bundled model, opened (no weights built yet).
pub fn bundled() -> LoadedModel {
    LoadedModel::open(&ModelSource::Bundled, OpenOptions::default()).unwrap()
}

/// A fresh dense f32 decoder of the bundled model, to change freely.
pub fn decoder() -> Decoder {
    bundled().build_weights(&LoadOptions::default()).unwrap()
}

/// A fresh decoder of the bundled model with NF4 block linears (QLoRA's base).
pub fn nf4_decoder() -> Decoder {
    bundled()
        .build_weights(&LoadOptions::nf4(Default::default()))
        .unwrap()
}

pub const STORIES: [&str; 6] = [
    "Tom had a red kite. He flew it high in the sky with his dad.",
    "Sue found a small cat under a tree. She gave it milk and it purred.",
    "The big dog ran to the park. It wanted to play with the ball.",
    "Ben and Mia built a tall tower of blocks. Then it fell down and they laughed.",
    "A little bird sang a happy song every morning by the window.",
    "Lily baked a cake with her mom. They shared it with their friends.",
];

/// A JSONL file of `{"text": ...}` rows.
pub fn text_dataset(dir: &Path, rows: &[&str]) -> PathBuf {
    let path = dir.join("stories.jsonl");
    let body: String = rows
        .iter()
        .map(|r| serde_json::json!({ "text": r }).to_string() + "\n")
        .collect();
    std::fs::write(&path, body).unwrap();
    path
}
