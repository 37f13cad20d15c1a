//! NF4 (4-bit NormalFloat) quantization with double quantization, as in QLoRA.
