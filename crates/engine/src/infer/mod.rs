//! Generation: chat templates, sampling, streaming.

pub mod generate;
pub mod template;
