//! Merged GGUF export (`export::gguf`): round trips through our reader for every type and
//! architecture, the q/k row order against a hand-computed case, the Q4_K_M plan with rows
//! that are not multiples of 256, tokenizer metadata equal to a real GGUF's, and atomic
//! writing. Tiny random decoders and the bundled model keep each test well under a second or
//! two.

#[path = "gguf_export/families.rs"]
mod families;
#[path = "gguf_export/helpers.rs"]
mod helpers;

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use helpers::*;
use peft_engine::export::gguf::{merged_tensor, plan, write_merged_gguf, ExportModel};
use peft_engine::export::gguf_quant::{tensor_type, GgufQuant, TensorRole};
use peft_engine::export::gguf_vocab::tokenizer_metadata;
use peft_engine::export::gguf_writer::{write_gguf, TensorHeader};
use peft_engine::model::gguf::{open_gguf, permute_rope_rows};
use peft_engine::model::gguf_tokenizer::{gguf_tokenizer, Meta};
use peft_engine::model::tensors::TensorSource;
use peft_engine::template::ChatTemplate;
use std::collections::HashMap;

const TEXTS: [&str; 8] = [
    "Once upon a time, there was a little girl.",
    "Tom had 12 red kites!",
    "  two spaces and\nnew lines\n\n",
    "### Instruction:\nHello\n\n### Response:\n",
    "naïve café",
    "<s>[INST] hi [/INST]</s>",
    "",
    "x=1; y = x*2",
];

/// Writes `d` (with the bundled tokenizer) as `quant` and reads it back with our importer:
/// every tensor within `tol` (relative) of the merged in-memory one, config equal.
fn round_trip(dims: Dims, quant: GgufQuant, tol: f32, lora: bool) {
    let base = bundled();
    let mut d = random_decoder(dims, 7);
    if lora {
        attach_random_lora(&mut d, 4, 0.5, 11);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let m = parts(&base, &d);
    let mut steps = 0;
    let summary = write_merged_gguf(&m, quant, &path, None, &mut |_| steps += 1).unwrap();
    assert_eq!(steps, summary.tensors, "one progress call per tensor");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), summary.bytes);
    let g = open_gguf(&path).unwrap();
    let mut want_cfg = d.config.clone();
    want_cfg.torch_dtype = g.config.torch_dtype.clone();
    want_cfg.eos_token_ids = g.config.eos_token_ids.clone();
    // GGUF stores these as f32 (llama.cpp's type).
    want_cfg.rms_norm_eps = f64::from(d.config.rms_norm_eps as f32);
    want_cfg.rope_theta = f64::from(d.config.rope_theta as f32);
    if dims.arch == "mistral" {
        // GGUF has no Mistral architecture: it is written (and computes) as Llama.
        want_cfg.arch = peft_engine::Arch::Llama;
        want_cfg.sliding_window = None;
    }
    assert_eq!(g.config, want_cfg, "{quant:?}: config");
    let names = g.source.names();
    let planned = plan(&d, quant).unwrap();
    assert_eq!(names.len(), planned.len());
    for t in &planned {
        let got = g.source.load(&t.hf_name).unwrap();
        let want = merged_tensor(&d, &t.hf_name).unwrap();
        let err = rel_err(&got, &want);
        let limit = if t.dtype == GgmlDType::F32 { 1e-7 } else { tol };
        assert!(
            err <= limit,
            "{quant:?} {} ({:?}): relative error {err} > {limit}",
            t.gguf_name,
            t.dtype
        );
    }
}

#[test]
fn f32_round_trip_is_exact_with_the_lora_merged() {
    round_trip(llama_dims(), GgufQuant::F32, 1e-7, true);
}

#[test]
fn every_type_round_trips_within_its_error() {
    // Rows of 256 so that Q4_K and Q6_K are really used (no fallback).
    let dims = Dims {
        hidden: 256,
        inter: 512,
        heads: 4,
        kv_heads: 4,
        ..llama_dims()
    };
    // Largest measured errors: 2e-4 (F16), 1.7e-3 (BF16), 4e-3 (Q8_0), 1.5e-2 (Q6_K), 6e-2 (Q4_K
    // on these uniform random weights); the limits leave room but catch a wrong block layout
    // or row order (errors ≈ 1).
    for (quant, tol) in [
        (GgufQuant::F16, 1e-3),
        (GgufQuant::Bf16, 5e-3),
        (GgufQuant::Q8_0, 1e-2),
        (GgufQuant::Q4KM, 8e-2),
    ] {
        round_trip(dims, quant, tol, true);
    }
}

#[test]
fn qwen2_and_mistral_round_trip() {
    for arch in ["qwen2", "mistral"] {
        let dims = Dims {
            arch,
            tied: arch == "qwen2",
            ..llama_dims()
        };
        round_trip(dims, GgufQuant::F32, 1e-7, true);
        round_trip(dims, GgufQuant::F16, 1e-3, false);
    }
}

#[test]
fn qk_rows_follow_llama_cpp_order_hand_computed() {
    // Two heads of dimension 4: HF rows (h, half, i) = 0..8 go to GGUF rows
    // [h0: 0, 2, 1, 3 | h1: 4, 6, 5, 7] (pairs (i, i + d/2) become adjacent).
    let rows = Tensor::arange(0f32, 8.0, &Device::Cpu)
        .unwrap()
        .reshape((8, 1))
        .unwrap();
    let got: Vec<f32> = permute_rope_rows(&rows, 2)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(got, vec![0., 2., 1., 3., 4., 6., 5., 7.]);

    // In a written file: llama's attn_q/attn_k rows permuted (k over its 2 kv heads), qwen2's
    // kept as they are.
    let base = bundled();
    for arch in ["llama", "qwen2"] {
        let dims = Dims {
            arch,
            ..llama_dims()
        };
        let d = random_decoder(dims, 3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        write_merged_gguf(&parts(&base, &d), GgufQuant::F32, &path, None, &mut |_| {}).unwrap();
        let (_, raw) = read_raw(&path);
        let q = merged_tensor(&d, "model.layers.0.self_attn.q_proj.weight").unwrap();
        let k = merged_tensor(&d, "model.layers.0.self_attn.k_proj.weight").unwrap();
        let order = |heads: usize, n: usize| -> Vec<u32> {
            // Hand-written: GGUF row h*d + 2i + j holds HF row h*d + j*d/2 + i.
            let dh = n / heads;
            let mut src = vec![0u32; n];
            for h in 0..heads {
                for j in 0..2 {
                    for i in 0..dh / 2 {
                        src[h * dh + 2 * i + j] = (h * dh + j * dh / 2 + i) as u32;
                    }
                }
            }
            src
        };
        let pick = |w: &Tensor, heads: usize| {
            let idx = order(heads, w.dim(0).unwrap());
            w.index_select(&Tensor::new(idx.as_slice(), &Device::Cpu).unwrap(), 0)
                .unwrap()
        };
        let (want_q, want_k) = if arch == "llama" {
            (pick(&q, 4), pick(&k, 2))
        } else {
            (q.clone(), k.clone())
        };
        assert_eq!(
            max_abs_diff(&raw["blk.0.attn_q.weight"], &want_q),
            0.0,
            "{arch} q"
        );
        assert_eq!(
            max_abs_diff(&raw["blk.0.attn_k.weight"], &want_k),
            0.0,
            "{arch} k"
        );
        let v = merged_tensor(&d, "model.layers.0.self_attn.v_proj.weight").unwrap();
        assert_eq!(
            max_abs_diff(&raw["blk.0.attn_v.weight"], &v),
            0.0,
            "{arch} v untouched"
        );
    }
}

#[test]
fn q4_k_m_plan_follows_llama_quantize_with_fallbacks() {
    use GgmlDType::*;
    // Qwen2.5-0.5B's shapes (hidden 896 = 3.5·256, intermediate 4864 = 19·256, 24 layers,
    // tied): llama-quantize gives Q5_0 to attn q/k/o and ffn gate/up (fallback from Q4_K),
    // Q8_0 to the tied output, and Q4_K/Q6_K only to ffn_down (rows of 4864).
    let t = |name: &str, shape: &[usize]| {
        tensor_type(
            GgufQuant::Q4KM,
            &TensorRole {
                name,
                shape,
                n_layers: 24,
                tied_output: true,
            },
        )
    };
    assert_eq!(t("token_embd.weight", &[151936, 896]), (Q8_0, false));
    assert_eq!(t("blk.5.attn_q.weight", &[896, 896]), (Q5_0, true));
    assert_eq!(t("blk.5.attn_k.weight", &[128, 896]), (Q5_0, true));
    assert_eq!(t("blk.5.attn_output.weight", &[896, 896]), (Q5_0, true));
    assert_eq!(t("blk.5.ffn_gate.weight", &[4864, 896]), (Q5_0, true));
    assert_eq!(t("blk.5.ffn_up.weight", &[4864, 896]), (Q5_0, true));
    // use_more_bits(i, 24): i < 3, i >= 21, or (i - 3) % 3 == 2.
    assert_eq!(t("blk.0.ffn_down.weight", &[896, 4864]), (Q6K, false));
    assert_eq!(t("blk.5.ffn_down.weight", &[896, 4864]), (Q6K, false));
    assert_eq!(t("blk.6.ffn_down.weight", &[896, 4864]), (Q4K, false));
    assert_eq!(t("blk.23.ffn_down.weight", &[896, 4864]), (Q6K, false));
    assert_eq!(t("blk.0.attn_v.weight", &[128, 896]), (Q8_0, true));
    assert_eq!(t("blk.6.attn_v.weight", &[128, 896]), (Q5_0, true));
    assert_eq!(t("blk.6.attn_norm.weight", &[896]), (F32, false));
    assert_eq!(t("blk.6.attn_q.bias", &[896]), (F32, false));
    // Rows of 80 do not split into 32-blocks either: F16.
    assert_eq!(t("blk.6.attn_q.weight", &[80, 80]), (F16, true));
    // Rows of 256: no fallback; an untied output gets Q6_K and the embedding the base Q4_K.
    let u = |name: &str| {
        tensor_type(
            GgufQuant::Q4KM,
            &TensorRole {
                name,
                shape: &[1024, 256],
                n_layers: 24,
                tied_output: false,
            },
        )
    };
    assert_eq!(u("output.weight"), (Q6K, false));
    assert_eq!(u("token_embd.weight"), (Q4K, false));
    assert_eq!(u("blk.6.attn_q.weight"), (Q4K, false));

    // The whole plan of a small model with rows of 96 (attention/gate/up) and 256 (down).
    let d = random_decoder(
        Dims {
            hidden: 96,
            inter: 256,
            layers: 8,
            heads: 3,
            kv_heads: 1,
            tied: true,
            ..llama_dims()
        },
        5,
    );
    let p = plan(&d, GgufQuant::Q4KM).unwrap();
    let ty: HashMap<&str, GgmlDType> = p.iter().map(|t| (t.gguf_name.as_str(), t.dtype)).collect();
    assert_eq!(ty["token_embd.weight"], Q8_0);
    assert!(!ty.contains_key("output.weight"));
    for i in 0..8 {
        let more = [0, 3, 6, 7].contains(&i); // use_more_bits(i, 8)
        assert_eq!(
            ty[format!("blk.{i}.ffn_down.weight").as_str()],
            if more { Q6K } else { Q4K }
        );
        assert_eq!(
            ty[format!("blk.{i}.attn_v.weight").as_str()],
            if more { Q8_0 } else { Q5_0 }
        );
        assert_eq!(ty[format!("blk.{i}.attn_q.weight").as_str()], Q5_0);
        assert_eq!(ty[format!("blk.{i}.ffn_up.weight").as_str()], Q5_0);
        assert_eq!(ty[format!("blk.{i}.ffn_norm.weight").as_str()], F32);
    }
    assert_eq!(p.iter().filter(|t| t.fallback).count(), 8 * 6);
}

#[test]
fn tokenizer_metadata_equals_a_real_gguf() {
    // SmolLM2-135M-Instruct, converted by llama.cpp: our metadata from the tokenizer we import
    // must give back its tokens, types, merges, pre-tokenizer, ids and template.
    let path = smollm_gguf();
    let g = open_gguf(&path).unwrap();
    let template = ChatTemplate::new(
        g.chat_template.as_deref().unwrap(),
        g.bos_token.as_deref().unwrap_or(""),
        g.eos_token.as_deref().unwrap_or(""),
    )
    .unwrap();
    let ours: HashMap<String, candle_core::quantized::gguf_file::Value> =
        tokenizer_metadata(&g.tokenizer, &template, 49152)
            .unwrap()
            .into_iter()
            .collect();
    let mut f = std::fs::File::open(&path).unwrap();
    let src = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    for key in ["tokenizer.ggml.tokens", "tokenizer.ggml.merges"] {
        assert_eq!(strings(&ours[key]), strings(&src.metadata[key]), "{key}");
    }
    let types = |v: &candle_core::quantized::gguf_file::Value| -> Vec<i64> {
        v.to_vec()
            .unwrap()
            .iter()
            .map(|x| x.to_i32().map(i64::from).unwrap())
            .collect()
    };
    assert_eq!(
        types(&ours["tokenizer.ggml.token_type"]),
        types(&src.metadata["tokenizer.ggml.token_type"])
    );
    for key in [
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.chat_template",
    ] {
        assert_eq!(ours[key].to_string().unwrap(), meta_str(&src, key), "{key}");
    }
    for key in [
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.padding_token_id",
    ] {
        assert_eq!(ours[key].to_u32().unwrap(), meta_u32(&src, key), "{key}");
    }
    let key = "tokenizer.ggml.add_bos_token";
    assert_eq!(
        ours[key].to_bool().unwrap(),
        src.metadata[key].to_bool().unwrap(),
        "{key}"
    );
}

#[test]
fn sentencepiece_tokenizer_survives_the_round_trip() {
    // The bundled Llama-2-style tokenizer (BPE with byte fallback): scores written from the
    // merge ranks must rebuild a tokenizer that encodes exactly like the original.
    let m = bundled();
    let kv: HashMap<String, _> = tokenizer_metadata(&m.tokenizer, &m.template, 512)
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(kv["tokenizer.ggml.model"].to_string().unwrap(), "llama");
    assert!(kv["tokenizer.ggml.add_bos_token"].to_bool().unwrap());
    assert!(kv["tokenizer.ggml.add_space_prefix"].to_bool().unwrap());
    let back = gguf_tokenizer(&Meta::new(&kv, "roundtrip")).unwrap();
    for text in TEXTS {
        for special in [false, true] {
            assert_eq!(
                back.encode(text, special).unwrap(),
                m.tokenizer.encode(text, special).unwrap(),
                "{text:?} (special {special})"
            );
        }
    }
    assert_eq!(back.bos_id, m.tokenizer.bos_id);
}

#[test]
fn a_failing_tensor_leaves_no_file_under_the_final_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    let headers: Vec<TensorHeader> = (0..4)
        .map(|i| TensorHeader {
            name: format!("t{i}"),
            shape: vec![2, 32],
            dtype: GgmlDType::F32,
        })
        .collect();
    let meta = vec![(
        "general.architecture".to_string(),
        candle_core::quantized::gguf_file::Value::String("llama".into()),
    )];
    let mut produce = |i: usize| {
        if i == 2 {
            return Err(peft_engine::Error::invalid("test", "injected failure"));
        }
        Ok(vec![0u8; 2 * 32 * 4])
    };
    let err = write_gguf(&path, &meta, &headers, &mut produce, &mut |_, _, _| {}).unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "files left behind: {left:?}");

    // An existing file under the final name survives a failed export untouched.
    std::fs::write(&path, b"previous export").unwrap();
    write_gguf(&path, &meta, &headers, &mut produce, &mut |_, _, _| {}).unwrap_err();
    assert_eq!(std::fs::read(&path).unwrap(), b"previous export");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // And a successful write replaces it with a file candle reads.
    let mut ok = |_: usize| Ok(vec![0u8; 2 * 32 * 4]);
    write_gguf(&path, &meta, &headers, &mut ok, &mut |_, _, _| {}).unwrap();
    let (content, raw) = read_raw(&path);
    assert_eq!(content.tensor_infos.len(), 4);
    assert_eq!(raw["t3"].dims(), &[2, 32]);
}

#[test]
fn metadata_carries_what_chat_needs() {
    let base = bundled();
    let d = random_decoder(llama_dims(), 9);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let m: ExportModel = parts(&base, &d);
    write_merged_gguf(&m, GgufQuant::Q8_0, &path, None, &mut |_| {}).unwrap();
    let (c, _) = read_raw(&path);
    assert_eq!(meta_str(&c, "general.architecture"), "llama");
    assert_eq!(meta_u32(&c, "general.file_type"), 7);
    assert_eq!(meta_u32(&c, "general.quantization_version"), 2);
    assert_eq!(meta_u32(&c, "llama.block_count"), 2);
    assert_eq!(meta_u32(&c, "llama.attention.head_count_kv"), 2);
    assert_eq!(meta_u32(&c, "llama.rope.dimension_count"), 16);
    assert_eq!(meta_u32(&c, "tokenizer.ggml.bos_token_id"), 1);
    assert_eq!(meta_u32(&c, "tokenizer.ggml.eos_token_id"), 2);
    assert_eq!(
        meta_str(&c, "tokenizer.chat_template"),
        base.template.source()
    );
    let types: Vec<i32> = c.metadata["tokenizer.ggml.token_type"]
        .to_vec()
        .unwrap()
        .iter()
        .map(|v| v.to_i32().unwrap())
        .collect();
    assert_eq!(
        &types[..3],
        &[2, 3, 3],
        "<unk> UNKNOWN, <s> and </s> CONTROL"
    );
    assert_eq!(types[3], 6, "<0x00> is a BYTE token");
}
