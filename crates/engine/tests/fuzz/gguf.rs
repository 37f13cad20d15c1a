//! GGUF headers and metadata: a valid tiny llama written byte by byte, then broken in one to
//! three ways (sizes, types, counts, alignment, tensor dims/types/offsets, tokenizer arrays,
//! truncation, flipped bytes), opened, and when it opens, used (weights, a forward pass,
//! tokenizer and chat template).

use crate::harness::{run, Rng, Verdict};
use peft_engine::infer::generate::{generate, GenerateOptions};
use peft_engine::model::decoder::LoadOptions;
use peft_engine::model::load::{ModelSource, OpenOptions};
use peft_engine::model::loaded::LoadedModel;
use std::path::Path;

#[derive(Clone, Debug)]
enum V {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(u8),
    Str(Vec<u8>),
    Arr(u32, Vec<V>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl V {
    fn ty(&self) -> u32 {
        match self {
            V::U8(_) => 0,
            V::I8(_) => 1,
            V::U16(_) => 2,
            V::I16(_) => 3,
            V::U32(_) => 4,
            V::I32(_) => 5,
            V::F32(_) => 6,
            V::Bool(_) => 7,
            V::Str(_) => 8,
            V::Arr(..) => 9,
            V::U64(_) => 10,
            V::I64(_) => 11,
            V::F64(_) => 12,
        }
    }
    fn write(&self, o: &mut Vec<u8>) {
        match self {
            V::U8(v) => o.push(*v),
            V::I8(v) => o.push(*v as u8),
            V::U16(v) => o.extend(v.to_le_bytes()),
            V::I16(v) => o.extend(v.to_le_bytes()),
            V::U32(v) => o.extend(v.to_le_bytes()),
            V::I32(v) => o.extend(v.to_le_bytes()),
            V::F32(v) => o.extend(v.to_le_bytes()),
            V::Bool(v) => o.push(*v),
            V::Str(s) => {
                o.extend((s.len() as u64).to_le_bytes());
                o.extend(s);
            }
            V::Arr(t, items) => {
                o.extend(t.to_le_bytes());
                o.extend((items.len() as u64).to_le_bytes());
                for i in items {
                    i.write(o);
                }
            }
            V::U64(v) => o.extend(v.to_le_bytes()),
            V::I64(v) => o.extend(v.to_le_bytes()),
            V::F64(v) => o.extend(v.to_le_bytes()),
        }
    }
}

fn s(x: &str) -> V {
    V::Str(x.as_bytes().to_vec())
}

struct T {
    name: String,
    /// GGUF order (fastest first).
    dims: Vec<u64>,
    dtype: u32,
    offset: u64,
}

struct G {
    kvs: Vec<(String, V)>,
    tensors: Vec<T>,
    data: Vec<u8>,
    n_tensors: Option<u64>,
    n_kv: Option<u64>,
}

const HIDDEN: u64 = 16;
const FFN: u64 = 32;
const KV: u64 = 8;

fn tokens() -> Vec<String> {
    let mut t: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    t.extend(
        "a b c d e f g h i j k l m n o p q r s t u v w x y z Ġ ab Ġa"
            .split(' ')
            .map(String::from),
    );
    t
}

/// A valid one-block llama: hidden 16, 2 heads of 8, 1 KV head, FFN 32, 32 tokens, F32.
fn base(rng: &mut Rng) -> G {
    let toks = tokens();
    let kvs = vec![
        ("general.architecture".into(), s("llama")),
        ("llama.block_count".into(), V::U32(1)),
        ("llama.context_length".into(), V::U32(64)),
        ("llama.embedding_length".into(), V::U32(HIDDEN as u32)),
        ("llama.feed_forward_length".into(), V::U32(FFN as u32)),
        ("llama.attention.head_count".into(), V::U32(2)),
        ("llama.attention.head_count_kv".into(), V::U32(1)),
        ("llama.attention.layer_norm_rms_epsilon".into(), V::F32(1e-5)),
        ("llama.rope.freq_base".into(), V::F32(10000.0)),
        ("llama.rope.dimension_count".into(), V::U32(8)),
        ("general.alignment".into(), V::U32(32)),
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s("smollm")),
        ("tokenizer.ggml.tokens".into(), V::Arr(8, toks.iter().map(|t| s(t)).collect())),
        (
            "tokenizer.ggml.token_type".into(),
            V::Arr(5, (0..toks.len()).map(|i| V::I32(if i < 3 { 3 } else { 1 })).collect()),
        ),
        ("tokenizer.ggml.merges".into(), V::Arr(8, vec![s("a b"), s("Ġ a")])),
        ("tokenizer.ggml.bos_token_id".into(), V::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), V::U32(2)),
        (
            "tokenizer.chat_template".into(),
            s("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
        ),
    ];
    let mut shapes: Vec<(String, Vec<u64>)> = vec![
        ("token_embd.weight".into(), vec![HIDDEN, 32]),
        ("output_norm.weight".into(), vec![HIDDEN]),
    ];
    for (n, d) in [
        ("attn_q", vec![HIDDEN, HIDDEN]),
        ("attn_k", vec![HIDDEN, KV]),
        ("attn_v", vec![HIDDEN, KV]),
        ("attn_output", vec![HIDDEN, HIDDEN]),
        ("ffn_gate", vec![HIDDEN, FFN]),
        ("ffn_up", vec![HIDDEN, FFN]),
        ("ffn_down", vec![FFN, HIDDEN]),
        ("attn_norm", vec![HIDDEN]),
        ("ffn_norm", vec![HIDDEN]),
    ] {
        shapes.push((format!("blk.0.{n}.weight"), d));
    }
    let mut data = Vec::new();
    let mut tensors = Vec::new();
    for (name, dims) in shapes {
        let n: u64 = dims.iter().product();
        tensors.push(T {
            name,
            dims,
            dtype: 0,
            offset: data.len() as u64,
        });
        for _ in 0..n {
            let v = (rng.below(2000) as f32 - 1000.0) / 4000.0;
            data.extend(v.to_le_bytes());
        }
        while data.len() % 32 != 0 {
            data.push(0);
        }
    }
    G {
        kvs,
        tensors,
        data,
        n_tensors: None,
        n_kv: None,
    }
}

fn serialize(g: &G) -> Vec<u8> {
    let mut o = b"GGUF".to_vec();
    o.extend(3u32.to_le_bytes());
    o.extend(g.n_tensors.unwrap_or(g.tensors.len() as u64).to_le_bytes());
    o.extend(g.n_kv.unwrap_or(g.kvs.len() as u64).to_le_bytes());
    for (k, v) in &g.kvs {
        s(k).write(&mut o);
        o.extend(v.ty().to_le_bytes());
        v.write(&mut o);
    }
    for t in &g.tensors {
        s(&t.name).write(&mut o);
        o.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            o.extend(d.to_le_bytes());
        }
        o.extend(t.dtype.to_le_bytes());
        o.extend(t.offset.to_le_bytes());
    }
    while !o.len().is_multiple_of(32) {
        o.push(0);
    }
    o.extend(&g.data);
    o
}

/// A value of a random type, often an extreme number.
fn wild(rng: &mut Rng) -> V {
    let n = rng.size();
    match rng.below(10) {
        0 => rng
            .pick(&[
                V::U8(n as u8),
                V::I8(n as i8),
                V::U16(n as u16),
                V::I16(n as i16),
            ])
            .clone(),
        1 => V::I32(-(rng.below(5) as i32)),
        2 => V::U64(n),
        3 => V::I64(n as i64),
        4 => V::F32(*rng.pick(&[f32::NAN, f32::INFINITY, -1.0, 0.0, 1e30])),
        5 => V::F64(*rng.pick(&[f64::NAN, -0.0, 1e308])),
        6 => {
            let n = rng.below(20);
            V::Str(rng.bytes(n))
        }
        7 => V::Arr(
            4,
            (0..rng.below(4))
                .map(|_| V::U32(rng.next() as u32))
                .collect(),
        ),
        8 => V::Bool(rng.below(3) as u8),
        _ => V::U32(n as u32),
    }
}

fn mutate(g: &mut G, rng: &mut Rng) {
    let n_keys = g.kvs.len();
    match rng.below(16) {
        // A size key set to an extreme value of the same type.
        0..=3 => {
            let i = rng.below(10).min(n_keys - 1);
            let v = rng.size();
            g.kvs[i].1 = match rng.below(3) {
                0 => V::U32(v as u32),
                1 => V::U64(v),
                _ => V::I32(v as i32),
            };
        }
        4 => {
            let i = rng.below(n_keys);
            g.kvs[i].1 = wild(rng);
        }
        5 => {
            let i = rng.below(n_keys);
            g.kvs.remove(i);
        }
        6 => {
            let a = rng.size();
            let v = *rng.pick(&[0, 1, 3, 7, 64, a]);
            let alignment = g.kvs.iter_mut().find(|(k, _)| k == "general.alignment");
            if let Some(kv) = alignment {
                kv.1 = rng
                    .pick(&[V::U32(v as u32), V::I32(v as i32), V::U8(v as u8)])
                    .clone();
            }
        }
        7 => {
            // Tokenizer arrays: shorter, empty, odd bytes, wrong element types.
            let k = *rng.pick(&[
                "tokenizer.ggml.tokens",
                "tokenizer.ggml.token_type",
                "tokenizer.ggml.merges",
            ]);
            if let Some((_, V::Arr(t, items))) = g.kvs.iter_mut().find(|(key, _)| key == k) {
                match rng.below(5) {
                    0 => items.truncate(rng.below(items.len() + 1)),
                    1 => items.clear(),
                    2 => {
                        let i = rng.below(items.len().max(1));
                        let n = rng.below(8);
                        if i < items.len() {
                            items[i] = V::Str(rng.bytes(n));
                        }
                    }
                    3 => {
                        *t = 6;
                        *items = items.iter().map(|_| V::F32(rng.next() as f32)).collect();
                    }
                    _ => items.extend((0..rng.below(5)).map(|_| s("x y"))),
                }
            }
        }
        8 => {
            let k = *rng.pick(&[
                "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.model",
                "tokenizer.ggml.pre",
                "tokenizer.chat_template",
                "general.architecture",
            ]);
            let v = wild(rng);
            let name: &&str = rng.pick(&["llama", "gpt2", "bert", "t5", ""]);
            let model = s(name);
            if let Some(kv) = g.kvs.iter_mut().find(|(key, _)| key == k) {
                kv.1 = if rng.one_in(2) { v } else { model };
            }
        }
        9 | 10 => {
            let i = rng.below(g.tensors.len());
            let t = &mut g.tensors[i];
            match rng.below(4) {
                0 => {
                    let j = rng.below(t.dims.len());
                    t.dims[j] = rng.size();
                }
                1 => t.dims = (0..rng.below(6)).map(|_| rng.size()).collect(),
                2 => t.dtype = rng.below(42) as u32,
                _ => t.offset = rng.size(),
            }
        }
        11 => {
            let i = rng.below(g.tensors.len());
            match rng.below(3) {
                0 => {
                    g.tensors.remove(i);
                }
                1 => {
                    g.tensors[i].name = rng
                        .pick(&[
                            "blk.0.attn_q.weight",
                            "blk.9.ffn_up.weight",
                            "rope_freqs.weight",
                            "x",
                            "",
                        ])
                        .to_string()
                }
                _ => g.data.truncate(rng.below(g.data.len())),
            }
        }
        12 => g.n_tensors = Some(rng.size()),
        13 => g.n_kv = Some(rng.size()),
        14 => {
            let k = format!(
                "llama.{}",
                rng.pick(&[
                    "expert_count",
                    "rope.scaling.type",
                    "attention.key_length",
                    "attention.value_length"
                ])
            );
            g.kvs.push((k, wild(rng)));
        }
        _ => {
            // Nested arrays and long strings in metadata.
            let depth = rng.below(70);
            let mut v = V::Arr(4, vec![]);
            for _ in 0..depth {
                v = V::Arr(9, vec![v]);
            }
            g.kvs.push(("x.nested".into(), v));
        }
    }
}

/// Opens the file as a model and, when that works, uses it.
fn use_model(path: &Path) -> peft_engine::Result<()> {
    let m = LoadedModel::load(
        &ModelSource::Gguf(path.to_path_buf()),
        OpenOptions::default(),
        &LoadOptions::default(),
    )?;
    let ids = m.chat_ids(&[peft_engine::template::Message::new("user", "ab c")])?;
    let d = m.chat_weights()?;
    let opts = GenerateOptions {
        max_new_tokens: 2,
        temperature: 0.0,
        ..Default::default()
    };
    if !ids.is_empty() {
        generate(
            &d,
            &m.tokenizer,
            &ids,
            &opts,
            &m.stop_ids(),
            None,
            &mut |_| {},
        )?;
    }
    Ok(())
}

#[test]
fn gguf_headers_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    run("gguf", 300, |rng, i| {
        let mut g = base(rng);
        for _ in 0..1 + rng.below(3) {
            mutate(&mut g, rng);
        }
        let mut bytes = serialize(&g);
        match rng.below(8) {
            0 => bytes.truncate(rng.below(bytes.len())),
            1 => {
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(bytes.len());
                    bytes[at] ^= 1 << rng.below(8);
                }
            }
            _ => {}
        }
        let path = dir.path().join(format!("case-{i}.gguf"));
        std::fs::write(&path, &bytes).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        // Use-time errors (a prompt longer than a declared context of 1) name the setting.
        let needles = [
            name.as_str(),
            "chat template",
            "tokenizer",
            "invalid setting",
        ];
        let v = Verdict::of(use_model(&path), &needles);
        let _ = std::fs::remove_file(&path);
        v
    });
}

#[test]
fn the_unbroken_base_file_loads_and_generates() {
    // The fuzz cases mean something only if the file they break is valid to begin with.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("base.gguf");
    std::fs::write(&path, serialize(&base(&mut Rng::new(1)))).unwrap();
    use_model(&path).unwrap();
}
