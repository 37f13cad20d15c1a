//! The planner's time model: the work of a step scales as its definition says, and the time
//! splits the way the measurements behind `Calibration` show (elementwise work dominates a
//! 260K model, GEMM a 7B one).

use peft_engine::peft::method::{LoraSettings, Method};
use peft_engine::plan::params::adapted_linears;
use peft_engine::plan::time::{step_time, step_work};
use peft_engine::plan::work::{head_gemm_passes, logit_passes, train_flops_per_token};
use peft_engine::plan::{estimate, Calibration, PlanRequest, Throughput};
use peft_engine::Config;

fn llama(hidden: usize, inter: usize, layers: usize, heads: usize, vocab: usize) -> Config {
    let json = format!(
        r#"{{"model_type":"llama","vocab_size":{vocab},"hidden_size":{hidden},"intermediate_size":{inter},
        "num_hidden_layers":{layers},"num_attention_heads":{heads},"num_key_value_heads":{heads},
        "max_position_embeddings":4096,"tie_word_embeddings":false,"rms_norm_eps":1e-5}}"#
    );
    Config::from_json(&json, "test").unwrap()
}

fn lora() -> Method {
    Method::Lora(LoraSettings::default())
}

#[test]
fn work_scales_with_tokens_accumulation_and_checkpointing() {
    let c = llama(256, 688, 4, 4, 1000);
    let base = PlanRequest {
        method: lora(),
        seq_len: 128,
        ..PlanRequest::default()
    };
    let w1 = step_work(&c, &base);
    let w2 = step_work(
        &c,
        &PlanRequest {
            grad_accum: 2,
            ..base.clone()
        },
    );
    // Two micro-steps are twice the per-token work; the parameters are updated once.
    assert!((w2.flops / w1.flops - 2.0).abs() < 1e-12);
    assert!((w2.logit_bytes / w1.logit_bytes - 2.0).abs() < 1e-12);
    assert_eq!(w2.trainable_bytes, w1.trainable_bytes);
    assert_eq!(w1.micro_steps, 1.0);
    assert_eq!(w2.micro_steps, 2.0);

    let ck = step_work(
        &c,
        &PlanRequest {
            grad_checkpointing: true,
            ..base.clone()
        },
    );
    assert!(
        ck.flops > w1.flops,
        "checkpointing recomputes block forwards"
    );
    assert_eq!(ck.logit_bytes, w1.logit_bytes, "the loss is not recomputed");

    // Every pass packs the whole weights, however few tokens: forward and backward, plus the
    // recomputed forward with checkpointing; the frozen head twice (the CPU's one-pass loss:
    // logits, then softmax times the head).
    let blocks = 4.0 * (4 * (4 * 256 * 256 + 3 * 256 * 688)) as f64;
    let head = 4.0 * (256 * 1000) as f64;
    assert_eq!(w1.weight_bytes, 2.0 * blocks + 2.0 * head);
    assert_eq!(ck.weight_bytes, 3.0 * blocks + 2.0 * head);
    assert_eq!(w2.weight_bytes, 2.0 * w1.weight_bytes);
    let short = step_work(
        &c,
        &PlanRequest {
            seq_len: 16,
            ..base.clone()
        },
    );
    assert_eq!(short.weight_bytes, w1.weight_bytes);

    // Checkpointing computes the forward's activations and scores once more; each adapted
    // projection (7 per block) is passed through a third time.
    assert_eq!(w1.recomputed_bytes, 0.0);
    assert_eq!(
        ck.recomputed_bytes,
        w1.activation_bytes + w1.attention_bytes
    );
    assert_eq!(ck.activation_bytes, w1.activation_bytes);
    assert_eq!(w1.adapter_passes, (4 * 7 * 2) as f64);
    assert_eq!(ck.adapter_passes, (4 * 7 * 3) as f64);
    let full = step_work(
        &c,
        &PlanRequest {
            method: Method::Full,
            ..base.clone()
        },
    );
    assert_eq!(full.adapter_passes, 0.0);

    let q = step_work(
        &c,
        &PlanRequest {
            method: Method::Qlora(LoraSettings::default()),
            ..base.clone()
        },
    );
    assert_eq!(w1.dequant_bytes, 0.0);
    // Every block projection is dequantized in forward and backward: 4 B × params × 2.
    let proj = 4 * (4 * 256 * 256 + 3 * 256 * 688);
    assert_eq!(q.dequant_bytes, (4 * 2 * proj) as f64);
}

/// The CPU's loss over a frozen head multiplies by it twice (logits, softmax times the head)
/// and writes each row of logits once; a trained head's, and the GPU's tiled loss, recompute
/// the logits in the backward; the GPU's unfused loss over a trained head does not.
#[test]
fn only_the_cpu_frozen_head_loss_is_one_pass() {
    let c = llama(256, 688, 4, 4, 1000);
    for (method, on_cpu, head, logits) in [
        (lora(), true, 2.0, 1.0),
        (Method::Full, true, 3.0, 2.0),
        (lora(), false, 3.0, 2.0),
        (Method::Full, false, 2.0, 1.0),
    ] {
        assert_eq!(
            head_gemm_passes(&c, &method, on_cpu),
            head,
            "{method:?} cpu {on_cpu}"
        );
        assert_eq!(
            logit_passes(&c, &method, on_cpu),
            logits,
            "{method:?} cpu {on_cpu}"
        );
    }
}

#[test]
fn flops_count_the_fused_loss_recomputation() {
    let c = llama(256, 688, 4, 4, 1000);
    let req = |m: Method| PlanRequest {
        method: m,
        seq_len: 64,
        ..PlanRequest::default()
    };
    let with_lora = train_flops_per_token(&c, &req(lora()));
    let full = train_flops_per_token(&c, &req(Method::Full));
    // Full adds every block weight gradient (2·in·out per matrix) and the head's (2·h·V); on
    // the CPU both run the fused loss, which recomputes the logits (2·h·V) either way. LoRA
    // adds its own matmuls (2·r·(in+out) per adapter, forward and twice in backward).
    let blocks: f64 = 4.0 * 2.0 * (4.0 * 256.0 * 256.0 + 3.0 * 256.0 * 688.0);
    let r = LoraSettings::default().rank as f64;
    let lora_mm: f64 = adapted_linears(&c, &lora())
        .iter()
        .map(|&(i, o)| 3.0 * 2.0 * r * (i + o) as f64)
        .sum();
    assert!(lora_mm > 0.0);
    let head_grad = 2.0 * 256.0 * 1000.0;
    // Full's trained head recomputes its logits in the backward; LoRA's frozen head gets the
    // loss and its input gradient in one pass (no recomputation).
    let recompute = 2.0 * 256.0 * 1000.0;
    let expected = full - blocks - head_grad - recompute + lora_mm;
    assert!(
        (with_lora - expected).abs() / expected < 1e-9,
        "lora {with_lora} vs {expected}"
    );
}

#[test]
fn time_is_elementwise_for_tiny_models_and_gemm_for_large_ones() {
    let k = Calibration::default();
    let tp = Throughput {
        gemm_gflops: 200.0,
        mem_gbps: 45.0,
        bf16_gemm_gflops: None,
    };
    let req = PlanRequest {
        method: lora(),
        seq_len: 256,
        throughput: tp,
        ..PlanRequest::default()
    };
    let tiny = step_time(&llama(64, 172, 5, 8, 512), &req, &k);
    assert!(tiny.memory_s > 2.0 * tiny.gemm_s, "{tiny:?}");
    let big = step_time(&llama(4096, 11008, 32, 32, 32000), &req, &k);
    assert!(big.gemm_s > big.memory_s + big.optimizer_s, "{big:?}");

    // The estimate's tokens/s is the step's tokens over its time.
    let c = llama(256, 688, 4, 4, 1000);
    let e = estimate(&c, &req);
    assert!((e.tokens_per_s - 256.0 / e.step_time.total()).abs() < 1e-6 * e.tokens_per_s);
    // A machine twice as fast in every probe runs the same step in half the time.
    let fast = PlanRequest {
        throughput: Throughput {
            gemm_gflops: 400.0,
            mem_gbps: 90.0,
            bf16_gemm_gflops: None,
        },
        ..req.clone()
    };
    let t1 = step_time(&c, &req, &k);
    let t2 = step_time(&c, &fast, &k);
    let variable = |t: &peft_engine::plan::StepTime| t.total() - t.fixed_s;
    assert!((variable(&t1) / variable(&t2) - 2.0).abs() < 1e-9);
}

#[test]
fn a_bf16_run_times_its_frozen_base_products_at_the_bf16_rate() {
    use peft_engine::plan::work::bf16_flops_per_token;
    let c = llama(256, 688, 4, 4, 1000);
    let k = Calibration::default();
    let tp = |bf16: Option<f64>| Throughput {
        gemm_gflops: 200.0,
        mem_gbps: 45.0,
        bf16_gemm_gflops: bf16,
    };
    let f32_run = PlanRequest {
        method: lora(),
        seq_len: 256,
        throughput: tp(Some(400.0)),
        ..PlanRequest::default()
    };
    let bf16_run = PlanRequest {
        bf16_compute: true,
        ..f32_run.clone()
    };
    let (w32, w16) = (step_work(&c, &f32_run), step_work(&c, &bf16_run));
    assert_eq!(w32.bf16_flops, 0.0);
    // The same products, split: every frozen-base FLOP of the forward and the input gradient
    // (block projections twice, the tied head twice in the one-pass fused loss).
    let blocks: f64 = (4 * 2 * (256 * 256 * 4 + 256 * 688 * 3)) as f64 * 2.0;
    let head = 2.0 * 2.0 * 256.0 * 1000.0;
    assert!((bf16_flops_per_token(&c, &bf16_run) - (blocks + head)).abs() < 1e-6);
    assert!((w16.flops + w16.bf16_flops - w32.flops).abs() < 1e-6 * w32.flops);
    assert!((w16.bf16_flops - 256.0 * (blocks + head)).abs() < 1e-6 * w16.bf16_flops);
    // Twice the rate halves their share of the GEMM time exactly; bf16 weights halve the
    // bytes the passes read.
    let (t32, t16) = (step_time(&c, &f32_run, &k), step_time(&c, &bf16_run, &k));
    let want = (w16.flops / 200.0 + w16.bf16_flops / 400.0) / (1e9 * k.gemm_efficiency);
    assert!((t16.gemm_s - want).abs() < 1e-9 * want);
    assert!(t16.gemm_s < t32.gemm_s && t16.memory_s < t32.memory_s);
    assert!((w16.weight_bytes * 2.0 - w32.weight_bytes).abs() < 1e-6 * w32.weight_bytes);
    // Unmeasured, the bf16 products are timed at the f32 rate.
    let unmeasured = PlanRequest {
        throughput: tp(None),
        ..bf16_run.clone()
    };
    let t = step_time(&c, &unmeasured, &k);
    assert!(
        (t.gemm_s - (w16.flops + w16.bf16_flops) / 200.0 / (1e9 * k.gemm_efficiency)).abs() < 1e-9
    );
    // Full fine-tuning and GPU runs have no bf16 products of ours.
    for r in [
        PlanRequest {
            method: Method::Full,
            ..bf16_run.clone()
        },
        PlanRequest {
            device: peft_engine::plan::ComputeDevice::Cuda,
            ..bf16_run.clone()
        },
    ] {
        assert_eq!(bf16_flops_per_token(&c, &r), 0.0);
    }
}
