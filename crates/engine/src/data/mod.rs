//! Datasets: format detection, parsing, rendering, tokenisation with loss masks, batching.
