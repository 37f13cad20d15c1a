//! The planner: exact parameter counts of published models, NF4 bytes, how activation terms
//! scale, and the recommender over assumed machines.

use peft_engine::hardware::{CpuFeatures, CpuInfo, Hardware};
use peft_engine::model::count::parameter_count;
use peft_engine::peft::method::{LoraSettings, Method, Selective};
use peft_engine::plan::estimate::nf4_linear_bytes;
use peft_engine::plan::params::{nf4_bytes, tensors, trainable_parameters};
use peft_engine::plan::recommend::{recommend, DataStats, RecommendOptions};
use peft_engine::plan::work::{block_activations, kv_cache_bytes};
use peft_engine::plan::{estimate, PlanRequest};
use peft_engine::Config;

/// HuggingFaceTB/SmolLM2-135M config.json (the fields we read).
fn smollm2() -> Config {
    Config::from_json(r#"{"model_type":"llama","vocab_size":49152,"hidden_size":576,"intermediate_size":1536,
        "num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,"max_position_embeddings":8192,
        "tie_word_embeddings":true,"rope_theta":100000.0,"rms_norm_eps":1e-5}"#, "smollm2").unwrap()
}

/// meta-llama/Llama-2-7b-hf config.json.
fn llama2_7b() -> Config {
    Config::from_json(r#"{"model_type":"llama","vocab_size":32000,"hidden_size":4096,"intermediate_size":11008,
        "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":32,"max_position_embeddings":4096,
        "tie_word_embeddings":false,"rms_norm_eps":1e-5}"#, "llama2").unwrap()
}

/// Qwen/Qwen2-0.5B config.json.
fn qwen2_05b() -> Config {
    Config::from_json(r#"{"model_type":"qwen2","vocab_size":151936,"hidden_size":896,"intermediate_size":4864,
        "num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,"max_position_embeddings":32768,
        "tie_word_embeddings":true,"rope_theta":1000000.0,"rms_norm_eps":1e-6}"#, "qwen2").unwrap()
}

#[test]
fn parameter_counts_match_published_models() {
    // Hugging Face `model.num_parameters()`: SmolLM2-135M 134,515,008; Llama-2-7B
    // 6,738,415,616; Qwen2-0.5B 494,032,768 (by hand: embed 151936·896 + 24 · 14,912,384 + 896).
    for (c, n) in [
        (smollm2(), 134_515_008usize),
        (llama2_7b(), 6_738_415_616),
        (qwen2_05b(), 494_032_768),
    ] {
        assert_eq!(parameter_count(&c), n);
        assert_eq!(tensors(&c).iter().map(|t| t.numel).sum::<usize>(), n);
        assert_eq!(trainable_parameters(&c, &Method::Full), n);
    }
}

#[test]
fn trainable_counts_by_method() {
    let c = smollm2();
    // r·(in+out) per projection: q 1152, k 768, v 768, o 1152, gate/up/down 2112 each = 10,176;
    // × r 8 × 30 layers.
    assert_eq!(
        trainable_parameters(&c, &Method::Lora(LoraSettings::default())),
        2_442_240
    );
    let qv = LoraSettings {
        targets: vec!["q_proj".into(), "v_proj".into()],
        rank: 16,
        ..Default::default()
    };
    assert_eq!(
        trainable_parameters(&c, &Method::Lora(qv)),
        16 * (1152 + 768) * 30
    );
    // Norms: two per block plus the final one.
    let norm = Method::Selective {
        what: Selective::Norm,
    };
    assert_eq!(trainable_parameters(&c, &norm), 576 * 61);
    // Qwen2's q/k/v biases: 896 + 128 + 128 per block.
    let bias = Method::Selective {
        what: Selective::Bias,
    };
    assert_eq!(trainable_parameters(&qwen2_05b(), &bias), 1152 * 24);
}

#[test]
fn nf4_bytes_are_real_sizes() {
    // 4096² weights: 8,388,608 packed + 262,144 absmax codes + 1,024 f32 scales + offset.
    let n = 4096 * 4096;
    assert_eq!(nf4_bytes(n), 8_388_608 + 262_144 + 4 * 1024 + 4);
    let bpp = nf4_bytes(n) as f64 / n as f64;
    assert!((bpp - 0.5159).abs() < 1e-3, "{bpp}");
    // Odd sizes round up: 65 elements = 33 bytes + 2 codes + 1 scale + offset.
    assert_eq!(nf4_bytes(65), 33 + 2 + 4 + 4);
    // Llama-2-7B's block projections (6.48B params) take ≈ 3.34 GB in NF4.
    let b = nf4_linear_bytes(&llama2_7b());
    assert!((3.30e9..3.40e9).contains(&(b as f64)), "{b}");
    // QLoRA's base term uses it; embeddings and lm_head stay f32.
    let e = estimate(
        &llama2_7b(),
        &PlanRequest {
            method: Method::Qlora(Default::default()),
            ..Default::default()
        },
    );
    let nf4_line = e
        .lines
        .iter()
        .find(|l| l.name == "base_weights.nf4")
        .unwrap();
    assert_eq!(nf4_line.bytes, b);
    let dense = e
        .lines
        .iter()
        .find(|l| l.name == "base_weights.frozen")
        .unwrap();
    assert_eq!(dense.bytes, 4 * (2 * 32000 * 4096 + 65 * 4096));
}

fn line(e: &peft_engine::plan::Estimate, name: &str) -> u64 {
    e.lines
        .iter()
        .find(|l| l.name == name)
        .map(|l| l.bytes)
        .unwrap_or(0)
}

#[test]
fn activations_scale_linearly_in_batch_and_as_expected_in_sequence() {
    use peft_engine::plan::ComputeDevice;
    let c = smollm2();
    // QLoRA off the CPU: its adapters keep tensors of their own (the fused LoRA linear keeps
    // nothing beyond its inputs, over a dense base and, on the CPU, over a quantized one).
    let base = PlanRequest {
        method: Method::Qlora(Default::default()),
        evaluation: false,
        seq_len: 256,
        device: ComputeDevice::Cuda,
        ..Default::default()
    };
    for (method, device) in [
        (Method::Lora(Default::default()), ComputeDevice::Cuda),
        (Method::Lora(Default::default()), ComputeDevice::Cpu),
        (Method::Qlora(Default::default()), ComputeDevice::Cpu),
    ] {
        let fused = estimate(
            &c,
            &PlanRequest {
                method,
                device,
                ..base.clone()
            },
        );
        assert!(fused.lines.iter().all(|l| l.name != "activations.lora"));
    }
    let e1 = estimate(&c, &base);
    let e2 = estimate(
        &c,
        &PlanRequest {
            batch_size: 2,
            ..base.clone()
        },
    );
    for name in [
        "activations.blocks",
        "activations.lora",
        "activations.attention_scores",
    ] {
        let (a, b) = (line(&e1, name), line(&e2, name));
        assert!(a > 0, "{name}");
        assert!(
            (b as f64 / a as f64 - 2.0).abs() < 1e-6,
            "{name}: {a} → {b}"
        );
    }
    // A frozen head takes the fused loss: bounded tiles, no vocabulary-sized logits at all.
    for e in [&e1, &e2] {
        let at_loss = peft_engine::plan::estimate::estimate(&c, &base).phases;
        assert!(at_loss.iter().any(|p| p.name == "logits backward"));
        assert!(e
            .lines
            .iter()
            .all(|l| l.name != "loss_tiles" || l.bytes == 16 << 20));
    }
    assert!(e1
        .lines
        .iter()
        .all(|l| l.name != "logits" && l.name != "logits_grad"));
    // Full fine-tuning trains the (tied) embedding: off the CPU the logits path, linear in
    // the batch; on the CPU the fused loss writes the head's gradient tile by tile.
    let full = |batch_size, device| {
        estimate(
            &c,
            &PlanRequest {
                method: peft_engine::peft::method::Method::Full,
                batch_size,
                device,
                ..base.clone()
            },
        )
    };
    let (f1, f2) = (full(1, ComputeDevice::Cuda), full(2, ComputeDevice::Cuda));
    assert_eq!(line(&f1, "logits"), 4 * 256 * 49_152 * 4);
    assert_eq!(line(&f2, "logits"), 2 * line(&f1, "logits"));
    let on_cpu = full(1, ComputeDevice::Cpu);
    assert!(on_cpu
        .lines
        .iter()
        .all(|l| l.name != "logits" && l.name != "logits_grad"));
    // Doubling the sequence: linear terms ×2, attention scores ×4 (they are s × s).
    let e3 = estimate(
        &c,
        &PlanRequest {
            seq_len: 512,
            ..base.clone()
        },
    );
    assert!(
        (line(&e3, "activations.blocks") as f64 / line(&e1, "activations.blocks") as f64 - 2.0)
            .abs()
            < 1e-6
    );
    assert!(
        (line(&e3, "activations.attention_scores") as f64
            / line(&e1, "activations.attention_scores") as f64
            - 4.0)
            .abs()
            < 1e-6
    );
    // Per block, by hand: 6h + 5q + 5kv + 3i = 3456 + 2880 + 960 + 4608, and 2·9·256 scores
    // and probs; on the CPU no head-major copy of q, k or v is made and the fused attention
    // keeps neither its output's second layout (3q + 3kv) nor the scores (9·256).
    let a = block_activations(&c, &base.method, 256, false);
    assert_eq!(a.dense, 11_904);
    assert_eq!(a.attention, 4_608);
    let a = block_activations(&c, &base.method, 256, true);
    assert_eq!(a.dense, 10_368);
    assert_eq!(a.attention, 2_304);
    // Checkpointing keeps only block inputs: far less than the full graph.
    let ck = estimate(
        &c,
        &PlanRequest {
            grad_checkpointing: true,
            ..base.clone()
        },
    );
    assert!(ck.peak_bytes < e1.peak_bytes);
    let slack = 1.0 + peft_engine::plan::Calibration::default().activation_slack;
    assert_eq!(
        line(&ck, "activations.block_inputs"),
        ((4 * 256 * 576 * 31) as f64 * slack) as u64
    );
    // The peak is the sum of its lines.
    assert_eq!(e1.lines.iter().map(|l| l.bytes).sum::<u64>(), e1.peak_bytes);
}

#[test]
fn a_trained_tied_embedding_holds_two_more_tables_at_the_end_of_backward() {
    let c = smollm2();
    let at = |m: Method| {
        estimate(
            &c,
            &PlanRequest {
                method: m,
                seq_len: 128,
                ..Default::default()
            },
        )
    };
    let full = at(Method::Full);
    // SmolLM2 ties its embedding: the scattered gradient and its sum with the head's.
    let table = 4 * 49152 * 576;
    let phase = full
        .phases
        .iter()
        .find(|p| p.name == "embedding gradient")
        .expect("full fine-tuning trains the embedding");
    assert_eq!(full.peak_phase, "embedding gradient");
    assert_eq!(line(&full, "embedding_gradient_sum"), 2 * table);
    assert_eq!(phase.bytes, full.peak_bytes);
    // LoRA does not train the embedding: no such phase.
    let lora = at(Method::Lora(Default::default()));
    assert!(lora.phases.iter().all(|p| p.name != "embedding gradient"));
}

#[test]
fn kv_cache_and_method_ordering() {
    let c = llama2_7b();
    // 2 (k, v) × 32 layers × 4096 × 4 B = 1 MiB per token.
    assert_eq!(kv_cache_bytes(&c, 1), 1 << 20);
    let at = |m: Method| {
        estimate(
            &c,
            &PlanRequest {
                method: m,
                ..Default::default()
            },
        )
        .peak_bytes
    };
    let (full, lora, qlora) = (
        at(Method::Full),
        at(Method::Lora(Default::default())),
        at(Method::Qlora(Default::default())),
    );
    assert!(full > lora && lora > qlora, "{full} {lora} {qlora}");
}

fn cpu() -> CpuInfo {
    CpuInfo {
        model: "test".into(),
        arch: "x86_64".into(),
        physical_cores: 2,
        logical_cores: 2,
        features: CpuFeatures::default(),
    }
}

fn data(len: usize) -> DataStats {
    DataStats::from_lengths((1..=100).map(|i| len * i / 100).collect())
}

const GIB: u64 = 1 << 30;

#[test]
fn recommender_over_assumed_machines() {
    let c = llama2_7b();
    let d = data(1024); // p95 = 973 → 1024
    let o = RecommendOptions::default();
    struct Case {
        ram: u64,
        best: Option<(&'static str, usize)>,
    }
    // Peaks of this engine (f32 compute, the CPU's fused attention): LoRA at 1024 tokens
    // ≈ 41 GiB, with checkpointing ≈ 29 GiB; QLoRA with checkpointing needs far less.
    let cases = [
        // Plenty: plain LoRA at the length covering 95 % of examples.
        Case {
            ram: 128 * GIB,
            best: Some(("LoRA", 1024)),
        },
        // Plain LoRA does not fit; LoRA with checkpointing does, at full length.
        Case {
            ram: 36 * GIB,
            best: Some(("LoRA with checkpointing", 1024)),
        },
        // LoRA does not fit even with checkpointing; QLoRA does at full length.
        Case {
            ram: 24 * GIB,
            best: Some(("QLoRA", 1024)),
        },
        // Nothing fits in 2 GiB.
        Case {
            ram: 2 * GIB,
            best: None,
        },
    ];
    for case in cases {
        let hw = Hardware::assumed_with_cpu(cpu(), case.ram, None);
        let r = recommend(&c, &hw, &d, &o);
        match (case.best, r.best()) {
            (Some((label, seq)), Some(b)) => {
                assert!(
                    b.label.starts_with(label),
                    "ram {}: {} vs {label}: {}",
                    case.ram / GIB,
                    b.label,
                    r.summary
                );
                if seq > 0 {
                    assert_eq!(b.request.seq_len, seq);
                }
                assert!(b.headroom_bytes >= 0);
                assert!(b.estimate.peak_bytes <= r.usable_bytes);
                assert!(r.summary.contains("needs"), "{}", r.summary);
            }
            (None, None) => {
                assert!(r.summary.starts_with("Nothing fits"), "{}", r.summary);
                assert!(r.summary.contains("parameters"), "{}", r.summary);
            }
            (want, got) => panic!(
                "ram {} GiB: wanted {:?}, got {:?}: {}",
                case.ram / GIB,
                want,
                got.map(|b| &b.label),
                r.summary
            ),
        }
    }
}

#[test]
fn shortens_sequences_before_refusing() {
    let c = smollm2();
    let d = data(2048);
    let o = RecommendOptions {
        method: Some(Method::Lora(Default::default())),
        ..Default::default()
    };
    // Find a budget where the full length does not fit at all but a shorter one does.
    let full_len = recommend(
        &c,
        &Hardware::assumed_with_cpu(cpu(), 1024 * GIB, None),
        &d,
        &o,
    );
    let leanest_full = full_len
        .candidates
        .iter()
        .filter(|x| {
            x.request.seq_len
                == full_len
                    .candidates
                    .iter()
                    .map(|c| c.request.seq_len)
                    .max()
                    .unwrap()
        })
        .map(|x| x.estimate.peak_bytes)
        .min()
        .unwrap();
    // Exactly the leanest full-length peak: the safety margin makes it not fit.
    let hw = Hardware::assumed_with_cpu(cpu(), leanest_full, None);
    let r = recommend(&c, &hw, &d, &o);
    let best = r.best().expect("a shorter sequence fits");
    assert!(
        best.request.seq_len < 1984,
        "p95 of 2048-token data rounds to 1984"
    );
    assert!(best.truncated_share > 0.0);
    // A GPU budget is VRAM, not RAM.
    let gpu = Hardware::assumed_with_cpu(cpu(), 1024 * GIB, Some(GIB / 2));
    assert!(recommend(&c, &gpu, &d, &o).best().is_none());
}

#[test]
fn a_run_too_big_here_names_the_smallest_gpu_class_it_fits() {
    use peft_engine::plan::elsewhere::EXPORT_HINT;
    use peft_engine::plan::gpu_classes::{usable_bytes, GPU_CLASSES};
    use peft_engine::plan::{estimate, ComputeDevice, PlanRequest};
    let c = llama2_7b();
    let d = data(1024);
    let o = RecommendOptions::default();
    // 16 GiB of RAM: plain LoRA at 1024 tokens (the preferred configuration) does not fit.
    let r = recommend(
        &c,
        &Hardware::assumed_with_cpu(cpu(), 16 * GIB, None),
        &d,
        &o,
    );
    let e = r
        .elsewhere
        .as_ref()
        .expect("the preferred run does not fit");
    assert_eq!((e.label.as_str(), e.seq_len), ("LoRA", 1024));
    // The figure is the same request's device peak on CUDA with a bf16 base.
    let on_gpu = PlanRequest {
        device: ComputeDevice::Cuda,
        weight_dtype: peft_engine::model::decoder::WeightDtype::Bf16,
        ..r.candidates
            .iter()
            .find(|x| x.label == "LoRA" && x.request.seq_len == 1024)
            .unwrap()
            .request
            .clone()
    };
    assert_eq!(e.gpu_bytes, estimate(&c, &on_gpu).device_bytes);
    // The named class holds it and every smaller class does not.
    let name = e.gpu.as_deref().expect("a 7B LoRA run fits one large GPU");
    let class = GPU_CLASSES.iter().find(|g| g.name == name).unwrap();
    assert_eq!(e.gpu_usable_bytes, usable_bytes(class));
    assert!(e.gpu_bytes <= e.gpu_usable_bytes);
    for g in GPU_CLASSES
        .iter()
        .filter(|g| usable_bytes(g) < usable_bytes(class))
    {
        assert!(usable_bytes(g) < e.gpu_bytes, "{} would hold it", g.name);
    }
    assert!(r.summary.contains(name), "{}", r.summary);
    assert!(
        r.summary.ends_with(&format!("{EXPORT_HINT}.")),
        "{}",
        r.summary
    );
    // Where the preferred run fits, nothing is suggested.
    let big = recommend(
        &c,
        &Hardware::assumed_with_cpu(cpu(), 512 * GIB, None),
        &d,
        &o,
    );
    assert!(big.best().is_some() && big.elsewhere.is_none());
    assert!(!big.summary.contains("GPU"), "{}", big.summary);
}

/// Loading has a moment of its own: the stored weights and the largest tensor widened to f32
/// before it is stored smaller. Qwen2-0.5B's 136M-entry embedding kept as bf16 needs a 544 MB
/// f32 copy in flight, more than a short QLoRA step with checkpointing holds, so loading is
/// the peak; stored as f32 the widened tensor is the result (one 4 MiB run in flight).
#[test]
fn loading_is_a_moment_of_its_own() {
    use peft_engine::model::decoder::WeightDtype;
    let c = qwen2_05b();
    let req = |dtype| PlanRequest {
        method: Method::Qlora(LoraSettings::default()),
        seq_len: 64,
        grad_checkpointing: true,
        weight_dtype: dtype,
        evaluation: false,
        ..PlanRequest::default()
    };
    let bf16 = estimate(&c, &req(WeightDtype::Bf16));
    assert_eq!(bf16.peak_phase, "loading");
    assert_eq!(line(&bf16, "loading"), 4 * 151_936 * 896);
    let f32 = estimate(&c, &req(WeightDtype::F32));
    assert_ne!(f32.peak_phase, "loading");
    let loading = |e: &peft_engine::plan::Estimate| {
        e.phases.iter().find(|p| p.name == "loading").unwrap().bytes
    };
    assert!(loading(&f32) < f32.peak_bytes);
    // f32 stores the embedding at twice bf16's size, and widens only the largest NF4-bound
    // projection (4864 × 896) in flight instead of the embedding.
    let embed = 151_936 * 896u64;
    // bf16: 2 B/entry stored + 4 B/entry in flight; f32: 4 B/entry stored + the projection.
    assert_eq!(loading(&bf16) - loading(&f32), 2 * embed - 4 * 4864 * 896);

    // A dense bf16 base loads its embedding first, while the blocks are not stored yet: the
    // moment's excess is the widest tensor less what is stored after it — for SmolLM2's
    // embedding nothing (the last projection's 4 MiB run dominates); for Llama-2's untied head,
    // loaded last, the whole head in f32.
    // Against f32 storage (nothing narrowed: one 4 MiB run in flight), the bf16 moment is the
    // halved matrices plus that excess less the run.
    let excess_over_f32 = |c: &Config| {
        let r = |weight_dtype| PlanRequest {
            method: Method::Lora(LoraSettings::default()),
            weight_dtype,
            evaluation: false,
            ..PlanRequest::default()
        };
        let matrices: u64 = tensors(c)
            .iter()
            .filter(|t| t.dims.is_some())
            .map(|t| t.numel as u64)
            .sum();
        let (b, f) = (
            loading(&estimate(c, &r(WeightDtype::Bf16))),
            loading(&estimate(c, &r(WeightDtype::F32))),
        );
        (b + 2 * matrices) as i64 - f as i64
    };
    assert_eq!(excess_over_f32(&smollm2()), 0);
    assert_eq!(excess_over_f32(&llama2_7b()), 4 * 32_000 * 4096 - (4 << 20));
}

/// Packing is on by default exactly where the planner's epoch is shorter with it: a dataset of
/// short examples under a long sequence packs, full-length examples do not; a fixed choice is
/// kept either way, and adopting a candidate carries its packing into the run's settings.
#[test]
fn the_recommender_packs_short_examples_only() {
    use peft_engine::plan::epoch::epoch_seconds;
    use peft_engine::plan::Calibration;
    use peft_engine::train::TrainConfig;
    let c = smollm2();
    let hw = Hardware::assumed_with_cpu(cpu(), 64 * GIB, None);
    // Chat turns of 20–60 tokens with a few long ones fixing the sequence at 512.
    let mut short: Vec<usize> = (0..400).map(|i| 20 + i % 41).collect();
    short.extend([500; 30]);
    let short = DataStats::from_lengths(short);
    let o = RecommendOptions {
        method: Some(Method::Lora(Default::default())),
        ..Default::default()
    };
    let r = recommend(&c, &hw, &short, &o);
    let best = r.best().unwrap();
    assert!(best.request.packing, "{}", best.reason);
    assert!(best.reason.contains("sample packing on"), "{}", best.reason);
    // The choice agrees with the planner's own epoch times for both settings.
    let k = Calibration::default();
    let unpacked = PlanRequest {
        packing: false,
        ..best.request.clone()
    };
    let (with, without) = (
        epoch_seconds(&c, &best.request, &k, &short.lengths),
        epoch_seconds(&c, &unpacked, &k, &short.lengths),
    );
    assert!(with < 0.95 * without, "{with} vs {without}");
    assert!(TrainConfig::default().with_plan(&best.request).packing);

    // Every example as long as the sequence: nothing to pack.
    let long = DataStats::from_lengths(vec![512; 100]);
    assert!(
        !recommend(&c, &hw, &long, &o)
            .best()
            .unwrap()
            .request
            .packing
    );
    // The user's fixed choice is kept.
    let off = RecommendOptions {
        packing: Some(false),
        ..o.clone()
    };
    let r = recommend(&c, &hw, &short, &off);
    assert!(r.candidates.iter().all(|x| !x.request.packing));
    let on = RecommendOptions {
        packing: Some(true),
        ..o
    };
    let r = recommend(&c, &hw, &long, &on);
    assert!(r.candidates.iter().all(|x| x.request.packing));
}

#[test]
fn avx512_bf16_dot_products_are_recommended_only_where_measured_faster_than_f32() {
    use peft_engine::plan::Throughput;
    let c = smollm2();
    let d = data(256);
    let mut dot = cpu();
    dot.features.avx512f = true;
    dot.features.avx512_bf16 = true;
    let hw = Hardware::assumed_with_cpu(dot, 64 * GIB, None);
    let with = |bf16: Option<f64>| RecommendOptions {
        base: PlanRequest {
            throughput: Throughput {
                gemm_gflops: 200.0,
                mem_gbps: 48.0,
                bf16_gemm_gflops: bf16,
            },
            ..PlanRequest::default()
        },
        ..RecommendOptions::default()
    };
    // Zen 4-like (dot products twice the f32 rate): on, and the reason names the unit.
    let fast = recommend(&c, &hw, &d, &with(Some(400.0)));
    assert!(!fast.candidates.is_empty());
    for cand in &fast.candidates {
        assert!(cand.request.bf16_compute, "{}", cand.label);
        assert!(cand.reason.contains("AVX512-BF16"), "{}", cand.reason);
    }
    // Sapphire Rapids-like (slower than its f32 FMAs), or not measured: off.
    for slow in [Some(150.0), None] {
        let r = recommend(&c, &hw, &d, &with(slow));
        assert!(
            r.candidates.iter().all(|cand| !cand.request.bf16_compute),
            "{slow:?}"
        );
    }
}

#[test]
fn the_recommender_computes_in_bf16_where_the_cpu_has_amx_tiles() {
    use peft_engine::model::decoder::WeightDtype;
    use peft_engine::train::TrainConfig;
    let c = smollm2();
    let d = data(256);
    let mut amx = cpu();
    amx.features.amx_bf16 = true;
    let with_amx = Hardware::assumed_with_cpu(amx, 64 * GIB, None);
    let without = Hardware::assumed_with_cpu(cpu(), 64 * GIB, None);
    let o = RecommendOptions::default();

    let r = recommend(&c, &with_amx, &d, &o);
    assert!(!r.candidates.is_empty());
    for cand in &r.candidates {
        assert!(cand.request.bf16_compute, "{}", cand.label);
        assert_eq!(cand.request.weight_dtype, WeightDtype::Bf16);
        assert!(cand.reason.contains("bf16 compute on"), "{}", cand.reason);
    }
    // The settings the app and `peft train --plan auto` take from it compute in bf16; the
    // stored-weight setting stays f32, the bf16 base following from the compute setting.
    let best = r.best().unwrap();
    let cfg = TrainConfig::default().with_plan(&best.request);
    assert!(cfg.bf16_compute);
    assert_eq!(cfg.weight_dtype, WeightDtype::F32);
    assert_eq!(cfg.base_weight_dtype(), WeightDtype::Bf16);
    assert_eq!(
        cfg.plan_request(Default::default(), Default::default())
            .weight_dtype,
        WeightDtype::Bf16
    );

    // Without AMX (the emulation is no faster), or with the user's "off", nothing computes in
    // bf16 and the base stays f32, also when the base request came from a bf16 setting.
    let plain = recommend(&c, &without, &d, &o);
    let bf16_base = RecommendOptions {
        base: TrainConfig {
            bf16_compute: true,
            ..TrainConfig::default()
        }
        .plan_request(Default::default(), Default::default()),
        bf16_compute: Some(false),
        ..o.clone()
    };
    let off = recommend(&c, &with_amx, &d, &bf16_base);
    for cand in plain.candidates.iter().chain(&off.candidates) {
        assert!(!cand.request.bf16_compute, "{}", cand.label);
        assert_eq!(cand.request.weight_dtype, WeightDtype::F32);
        assert!(!cand.reason.contains("bf16"), "{}", cand.reason);
    }
    assert!(
        !TrainConfig::default()
            .with_plan(&off.best().unwrap().request)
            .bf16_compute
    );
    // LoRA's bf16 base is the smaller plan.
    let (b, f) = (&r.candidates[0], &plain.candidates[0]);
    assert_eq!(
        (b.label.as_str(), b.request.seq_len),
        (f.label.as_str(), f.request.seq_len)
    );
    assert!(b.estimate.peak_bytes < f.estimate.peak_bytes);
    // Full fine-tuning never computes in bf16, AMX or not.
    let full = RecommendOptions {
        method: Some(Method::Full),
        ..o.clone()
    };
    assert!(recommend(&c, &with_amx, &d, &full)
        .candidates
        .iter()
        .all(|cand| !cand.request.bf16_compute));
}
