//! GGUF import (llama architecture): metadata → Config, tensors → f32 HF names, tokenizer.
