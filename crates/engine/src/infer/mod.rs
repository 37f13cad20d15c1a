//! Generation: chat templates, sampling, streaming.

pub mod template;
