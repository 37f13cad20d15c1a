//! Hugging Face hub downloads through hf-hub, with byte-level progress.
