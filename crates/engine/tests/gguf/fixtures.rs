//! Shared pieces of the GGUF tests: paths to the real models, deterministic random tensors,
//! llama.cpp's q/k row order written independently of the library, and tiny GGUF writers.

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};

pub fn smollm_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/models/smollm2-135m-instruct-q4_1/"
    ))
}

pub fn smollm_gguf() -> PathBuf {
    smollm_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

#[allow(unused_imports)]
pub use peft_engine::test_support::{max_abs, rel_err, uniform as random};

/// llama.cpp's HF→GGUF q/k row order, written with explicit indices (independent of the
/// library's reshape-based version): HF row `h*d + j*d/2 + i` goes to GGUF row `h*d + 2i + j`.
pub fn gguf_row_order(w: &Tensor, n_heads: usize) -> Tensor {
    let out = w.dim(0).unwrap();
    let d = out / n_heads;
    let mut src = vec![0u32; out];
    for h in 0..n_heads {
        for j in 0..2 {
            for i in 0..d / 2 {
                src[h * d + 2 * i + j] = (h * d + j * d / 2 + i) as u32;
            }
        }
    }
    let idx = Tensor::new(src.as_slice(), &Device::Cpu).unwrap();
    w.index_select(&idx, 0).unwrap()
}

/// Raw GGUF tensor (llama.cpp row order), dequantized, straight from candle.
pub fn raw_gguf_tensor(path: &Path, name: &str) -> Tensor {
    let mut f = std::fs::File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    content
        .tensor(&mut f, name, &Device::Cpu)
        .unwrap()
        .dequantize(&Device::Cpu)
        .unwrap()
}

/// Scores `q·kᵀ` per query head `[heads, s, s]` after RoPE, GQA by `h / groups`.
pub fn rope_scores(
    x: &Tensor,
    wq: &Tensor,
    wk: &Tensor,
    heads: usize,
    kv: usize,
    interleaved: bool,
) -> Tensor {
    let (s, d) = (x.dim(0).unwrap(), 64);
    let theta = 100000f32;
    let inv: Vec<f32> = (0..d / 2)
        .map(|i| 1.0 / theta.powf(2.0 * i as f32 / d as f32))
        .collect();
    let inv = Tensor::new(inv.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let pos = Tensor::arange(0f32, s as f32, &Device::Cpu)
        .unwrap()
        .unsqueeze(1)
        .unwrap();
    let freqs = pos.broadcast_mul(&inv).unwrap();
    let (cos, sin) = (freqs.cos().unwrap(), freqs.sin().unwrap());
    let project = |w: &Tensor, n: usize| {
        let y = x.matmul(&w.t().unwrap()).unwrap();
        let y = y
            .reshape((1, s, n, d))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap();
        if interleaved {
            candle_nn::rotary_emb::rope_i(&y, &cos, &sin).unwrap()
        } else {
            candle_nn::rotary_emb::rope(&y, &cos, &sin).unwrap()
        }
    };
    let (q, k) = (project(wq, heads), project(wk, kv));
    let per_head: Vec<Tensor> = (0..heads)
        .map(|h| {
            let qh = q.get(0).unwrap().get(h).unwrap();
            let kh = k.get(0).unwrap().get(h / (heads / kv)).unwrap();
            qh.matmul(&kh.t().unwrap()).unwrap()
        })
        .collect();
    Tensor::stack(&per_head, 0).unwrap()
}

// ---------- small GGUF files written in the tests ----------

/// The tiny vocabulary: 3 control tokens, a–z, `Ġ` (byte-level space), and merges `ab`, `Ġa`.
pub fn tiny_tokens() -> Vec<&'static str> {
    let mut t = vec!["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    t.extend("a b c d e f g h i j k l m n o p q r s t u v w x y z Ġ ab Ġa".split(' '));
    t
}

pub fn strings(v: &[&str]) -> Value {
    Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect())
}

/// Metadata of a tiny llama: 2 blocks, hidden 64, 4 heads / 2 KV heads of 16, FFN 256.
pub fn tiny_metadata(arch: &str) -> Vec<(String, Value)> {
    let types = (0..32)
        .map(|i| Value::I32(if i < 3 { 3 } else { 1 }))
        .collect();
    vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("llama.block_count".into(), Value::U32(2)),
        ("llama.context_length".into(), Value::U32(256)),
        ("llama.embedding_length".into(), Value::U32(64)),
        ("llama.feed_forward_length".into(), Value::U32(256)),
        ("llama.attention.head_count".into(), Value::U32(4)),
        ("llama.attention.head_count_kv".into(), Value::U32(2)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
        ("llama.rope.freq_base".into(), Value::F32(10000.0)),
        ("llama.rope.dimension_count".into(), Value::U32(16)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        ("tokenizer.ggml.tokens".into(), strings(&tiny_tokens())),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), strings(&["a b", "Ġ a"])),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.eot_token_id".into(), Value::U32(0)),
    ]
}

/// (GGUF name, HF name, f32 weight in HF row order, storage type) of the tiny llama.
pub fn tiny_weights() -> Vec<(String, String, Tensor, GgmlDType)> {
    use GgmlDType::*;
    let mut v = vec![
        (
            "token_embd.weight",
            "model.embed_tokens.weight",
            vec![32, 64],
            F16,
        ),
        ("output_norm.weight", "model.norm.weight", vec![64], F32),
        ("output.weight", "lm_head.weight", vec![32, 64], Q8_0),
    ]
    .into_iter()
    .map(|(g, h, s, t)| (g.to_string(), h.to_string(), s, t))
    .collect::<Vec<_>>();
    let per_layer = [
        ("attn_q", "self_attn.q_proj", [64, 64], [Q8_0, Q4_0]),
        ("attn_k", "self_attn.k_proj", [32, 64], [Q4_1, Q5_0]),
        ("attn_v", "self_attn.v_proj", [32, 64], [F32, Q5_1]),
        ("attn_output", "self_attn.o_proj", [64, 64], [BF16, F16]),
        ("ffn_gate", "mlp.gate_proj", [256, 64], [Q8_0, Q4_0]),
        ("ffn_up", "mlp.up_proj", [256, 64], [Q4_1, Q8_0]),
        ("ffn_down", "mlp.down_proj", [64, 256], [Q4K, Q6K]),
    ];
    for l in 0..2 {
        for (g, h, s, t) in per_layer {
            v.push((
                format!("blk.{l}.{g}.weight"),
                format!("model.layers.{l}.{h}.weight"),
                s.to_vec(),
                t[l],
            ));
        }
        for (g, h) in [
            ("attn_norm", "input_layernorm"),
            ("ffn_norm", "post_attention_layernorm"),
        ] {
            v.push((
                format!("blk.{l}.{g}.weight"),
                format!("model.layers.{l}.{h}.weight"),
                vec![64],
                F32,
            ));
        }
    }
    v.into_iter()
        .enumerate()
        .map(|(i, (g, h, s, t))| (g, h, random(&s, 100 + i as u64), t))
        .collect()
}

/// Writes a GGUF; q/k weights are stored in llama.cpp's row order, as its converter does.
pub fn write_gguf(
    path: &Path,
    md: &[(String, Value)],
    weights: &[(String, String, Tensor, GgmlDType)],
) {
    let quantized: Vec<(String, QTensor)> = weights
        .iter()
        .map(|(g, _, w, t)| {
            let stored = if g.contains("attn_q") {
                gguf_row_order(w, 4)
            } else if g.contains("attn_k") {
                gguf_row_order(w, 2)
            } else {
                w.clone()
            };
            (g.clone(), QTensor::quantize(&stored, *t).unwrap())
        })
        .collect();
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = quantized.iter().map(|(n, q)| (n.as_str(), q)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
}

/// Largest relative error we accept per storage type, about 1.5× what was measured on
/// uniform [-1, 1) data with candle 0.11.1 (`every_supported_type_…`): F16 1.8e-4, BF16 1.5e-3,
/// Q8_0 3.7e-3, Q6_K 1.4e-2, Q5_0 3.1e-2, Q5_1 3.0e-2, Q5_K 2.8e-2, Q4_0 6.5e-2, Q4_1 6.1e-2,
/// Q4_K 5.7e-2, Q3_K 0.125, Q2_K 0.238.
pub fn tolerance(t: GgmlDType) -> f32 {
    use GgmlDType::*;
    match t {
        F32 => 0.0,
        F16 => 3e-4,
        BF16 => 2.5e-3,
        Q8_0 => 6e-3,
        Q6K => 2.1e-2,
        Q5_0 | Q5_1 | Q5K => 4.7e-2,
        Q4_0 | Q4_1 | Q4K => 0.1,
        Q3K => 0.19,
        Q2K => 0.36,
        Q8_1 | Q8K => 0.0,
    }
}

/// Asserts that `r` failed with the file's path in the message, and returns the message.
pub fn expect_err<T>(r: peft_engine::Result<T>, path: &Path) -> (String, &'static str) {
    let e = match r {
        Ok(_) => panic!("expected an error for {}", path.display()),
        Err(e) => e,
    };
    let msg = e.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "message does not name the file: {msg}"
    );
    (msg, e.code())
}
