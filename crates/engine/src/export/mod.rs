//! Exports: merged Hugging Face model folders.

pub mod merge;
