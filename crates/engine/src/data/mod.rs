//! Datasets: format detection, parsing, rendering, tokenisation with loss masks, batching.

pub mod batch;
pub mod demo;
pub mod formats;
pub mod inspect;
pub mod render;
