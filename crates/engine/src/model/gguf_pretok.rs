//! llama.cpp's pre-tokenizer names (`tokenizer.ggml.pre`) and the Hugging Face pre-tokenizer
//! each stands for: read when importing a GGUF's tokenizer (`model::gguf_tokenizer`) and when
//! writing one (`export::gguf_vocab`). Kept apart from the per-architecture table
//! (`model::gguf_arch`) so the tokenizer importer does not depend on the architectures.

/// A Hugging Face pre-tokenizer reduced to the pieces that decide how text is split:
/// `Split` regexes, individual digits, and byte-level with or without GPT-2's own regex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrePiece {
    Regex(&'static str),
    Digits,
    /// ByteLevel with `use_regex = true` (GPT-2's split).
    ByteLevelGpt2,
    /// ByteLevel with `use_regex = false` (bytes only; the split comes from a regex before it).
    ByteLevel,
}

/// Llama 3's split regex (`tokenizer.ggml.pre = llama-bpe`).
pub const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: Llama 3's with single digits (`tokenizer.ggml.pre = qwen2`).
pub const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.pre` names for byte-level BPE vocabularies, with the Hugging Face
/// pre-tokenizer each one means in llama.cpp (`llama-vocab.cpp`). `smollm` stands for the
/// digits-then-GPT-2 split that llama.cpp also calls `starcoder` and `refact`.
pub const PRE_TOKENIZERS: &[(&str, &[PrePiece])] = &[
    ("gpt-2", &[PrePiece::ByteLevelGpt2]),
    ("smollm", &[PrePiece::Digits, PrePiece::ByteLevelGpt2]),
    (
        "llama-bpe",
        &[PrePiece::Regex(LLAMA3_REGEX), PrePiece::ByteLevel],
    ),
    (
        "qwen2",
        &[PrePiece::Regex(QWEN2_REGEX), PrePiece::ByteLevel],
    ),
];

/// The `tokenizer.ggml.pre` name for a pre-tokenizer, if llama.cpp has one we know.
pub fn pre_tokenizer_name(pieces: &[PrePiece]) -> Option<&'static str> {
    PRE_TOKENIZERS
        .iter()
        .find(|(_, p)| *p == pieces)
        .map(|(n, _)| *n)
}

/// The pieces of a known `tokenizer.ggml.pre` name.
pub fn pre_tokenizer_pieces(name: &str) -> Option<&'static [PrePiece]> {
    PRE_TOKENIZERS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| *p)
}
