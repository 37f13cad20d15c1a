//! Chat templates (Hugging Face Jinja semantics) rendered with minijinja.
