//! Upper bounds on sizes that come from files a user opens (GGUF headers, `config.json`,
//! datasets, chat templates), checked before anything is allocated from them.
//!
//! Why: a size read from a file is attacker- or accident-controlled. Without a bound, a header
//! that claims a 16M-token context or a million layers makes the engine allocate (or multiply
//! into an overflow) before any tensor is read. Each bound is well above every real model
//! (noted beside it), so no real file is refused; the error names the file and the field.
//!
//! Not here: bounds that depend on the machine (memory planning is `plan`), and the checks of
//! tensor byte ranges against the file (the readers do those).

use crate::error::{Error, Result};

/// Transformer blocks (largest real dense models: ~126).
pub const MAX_LAYERS: usize = 1024;
/// Hidden size (Llama 3.1 405B: 16384).
pub const MAX_HIDDEN: usize = 1 << 17;
/// MLP width (Llama 3.1 405B: 53248).
pub const MAX_INTERMEDIATE: usize = 1 << 20;
/// Vocabulary (Gemma 3: 262144).
pub const MAX_VOCAB: usize = 1 << 22;
/// Attention heads, query or key/value (405B: 128).
pub const MAX_HEADS: usize = 1024;
/// Size of one head (real models: 64–256).
pub const MAX_HEAD_DIM: usize = 1024;
/// Declared context length (the longest claimed by real models is 10M).
pub const MAX_CONTEXT: usize = 1 << 24;
/// Positions whose rotary tables are precomputed. Models declaring more still load; positions
/// past this are refused with a clear error (128k covers every real model's full context, and
/// far more than a CPU trains on), so a header declaring 16M positions cannot make the engine
/// build gigabytes of tables.
pub const MAX_ROPE_POSITIONS: usize = 1 << 17;

/// One dataset row, in bytes of text (a row longer than this is almost certainly a whole file
/// pasted into one field; training truncates rows to the sequence length anyway).
pub const MAX_ROW_BYTES: usize = 8 << 20;
/// Turns in one conversation.
pub const MAX_TURNS: usize = 2048;

/// Instructions one chat-template rendering may run (minijinja "fuel"). A real template
/// needs ~50–200 per message; this lets a conversation of many thousand turns render and stops
/// a hostile loop within seconds.
pub const TEMPLATE_FUEL: u64 = 20_000_000;
/// Nesting of macro calls and includes in a template (real templates: 0–3).
pub const TEMPLATE_RECURSION: usize = 64;
/// Seconds one rendering may run (checked as loops advance).
pub const TEMPLATE_SECONDS: u64 = 5;
/// Bytes one rendering may produce (and the largest string a width/count argument of a
/// template filter may build).
pub const TEMPLATE_OUTPUT_BYTES: usize = 64 << 20;

/// Checks `value <= max`, naming the file and field otherwise.
///
/// # Errors
/// [`Error::Config`] when `value` exceeds `max`.
pub fn check_max(file: &str, field: &str, value: usize, max: usize) -> Result<()> {
    if value > max {
        return Err(Error::Config {
            file: file.to_string(),
            field: field.to_string(),
            message: format!(
                "{value} is larger than any real model's ({max} at most); the file is corrupt or \
                 not a model"
            ),
        });
    }
    Ok(())
}

/// The bound of a size field of `config.json` (Hugging Face names), if it has one.
pub fn model_size_max(field: &str) -> Option<usize> {
    Some(match field {
        "vocab_size" => MAX_VOCAB,
        "hidden_size" => MAX_HIDDEN,
        "intermediate_size" => MAX_INTERMEDIATE,
        "num_hidden_layers" => MAX_LAYERS,
        "num_attention_heads" | "num_key_value_heads" => MAX_HEADS,
        "head_dim" => MAX_HEAD_DIM,
        "max_position_embeddings" => MAX_CONTEXT,
        _ => return None,
    })
}

/// Checks a model's declared sizes (`(field, value)`, Hugging Face names) against their
/// bounds, and its float settings (`(field, value, zero allowed)`) for being finite and
/// positive (a NaN or negative norm epsilon or rotary base turns every activation into NaN).
///
/// # Errors
/// [`Error::Config`] naming the file and the first field at fault.
pub fn check_model(
    file: &str,
    sizes: &[(&str, Option<usize>)],
    floats: &[(&str, Option<f64>, bool)],
) -> Result<()> {
    for (field, value) in sizes {
        if let (Some(v), Some(max)) = (value, model_size_max(field)) {
            check_max(file, field, *v, max)?;
        }
    }
    for (field, value, zero_ok) in floats {
        if let Some(x) = value {
            if !x.is_finite() || *x < 0.0 || (*x == 0.0 && !zero_ok) {
                return Err(Error::Config {
                    file: file.to_string(),
                    field: field.to_string(),
                    message: format!("{x} is not a finite positive number"),
                });
            }
        }
    }
    Ok(())
}

/// The product of `dims` (tensor sizes), or `None` when it overflows `usize`.
pub fn checked_product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_max_names_the_file_and_field() {
        assert!(check_max("c.json", "vocab_size", MAX_VOCAB, MAX_VOCAB).is_ok());
        let e = check_max("c.json", "vocab_size", MAX_VOCAB + 1, MAX_VOCAB).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("c.json") && s.contains("vocab_size"), "{s}");
    }

    #[test]
    fn checked_product_detects_overflow() {
        assert_eq!(checked_product(&[2, 3, 4]), Some(24));
        assert_eq!(checked_product(&[]), Some(1));
        assert_eq!(checked_product(&[1 << 40, 1 << 40]), None);
    }
}
