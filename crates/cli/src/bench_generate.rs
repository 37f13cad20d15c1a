//! `peft bench generate`: prefill and decode tokens/s, weights in memory and peak RSS, one
//! (model, storage) pair per child process so each peak is its own. A GGUF model is measured
//! in its own block types (what chat uses) as well as dequantized to f32, bf16 and Q8_0 (the
//! dense storages a folder model has), so the table compares like with like on the same file,
//! prompt and thread count.
//! `scripts/bench_llamacpp_generate.py` prints the same figures for llama.cpp.

use clap::Args;
use peft_engine::infer::generate::{generate, GenerateOptions};
use peft_engine::memory::{format_bytes, peak_rss_bytes};
use peft_engine::model::decoder::{LoadOptions, WeightDtype};
use peft_engine::model::load::{ModelSource, OpenOptions};
use peft_engine::model::loaded::LoadedModel;
use std::time::Instant;

const SMOLLM2: &str = "../shared/models/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Args)]
pub struct BenchGenerateArgs {
    /// Models to measure (default: the bundled model and the SmolLM2 GGUF in ../shared).
    #[arg(long)]
    model: Vec<String>,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Prompt length in tokens.
    #[arg(long, alias = "prompt-len", default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens to generate.
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Only these storages (comma list of gguf, f32, bf16, q8_0; default: all that apply —
    /// gguf only for a GGUF file).
    #[arg(long)]
    storages: Option<String>,
    /// Run a single measurement in this process, in this storage, and print one JSON line
    /// (used internally).
    #[arg(long, hide = true)]
    child: Option<String>,
}

pub fn run(a: BenchGenerateArgs) -> peft_engine::Result<()> {
    if let Some(storage) = &a.child {
        let model = a.model.first().map_or(SMOLLM2, String::as_str);
        return child(model, storage, a.prompt_tokens, a.new_tokens);
    }
    let models = match a.model.is_empty() {
        true => vec!["demo".to_string(), SMOLLM2.to_string()],
        false => a.model.clone(),
    };
    let threads = a.threads.map_or("all".into(), |t| t.to_string());
    println!(
        "| model | weights as | threads | prompt | prefill tok/s | decode tok/s | weights in memory \
         | file | KV cache | RSS before load | peak RSS | peak / (file + KV) | (peak − before) / (file + KV) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for m in models {
        let all: &[&str] = match ModelSource::parse(&m)? {
            ModelSource::Gguf(_) => &["gguf", "f32", "bf16", "q8_0"],
            _ => &["f32", "bf16", "q8_0"],
        };
        let storages: Vec<&str> = match &a.storages {
            Some(list) => list.split(',').map(str::trim).collect(),
            None => all.to_vec(),
        };
        for storage in &storages {
            let exe = std::env::current_exe().map_err(|e| peft_engine::Error::io("peft", e))?;
            let mut cmd = std::process::Command::new(exe);
            cmd.args(["bench", "generate", "--child", storage, "--model", &m])
                .args(["--prompt-tokens", &a.prompt_tokens.to_string()])
                .args(["--new-tokens", &a.new_tokens.to_string()]);
            if let Some(t) = a.threads {
                // candle's CPU kernels size their pools from this.
                cmd.env("RAYON_NUM_THREADS", t.to_string());
            }
            let out = cmd
                .output()
                .map_err(|e| peft_engine::Error::io("peft", e))?;
            let line = String::from_utf8_lossy(&out.stdout);
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line.trim()) else {
                println!(
                    "| {m} | {storage} | failed: {} |",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                continue;
            };
            let num = |k: &str| v[k].as_f64().unwrap_or(0.0);
            let bytes = |k: &str| v[k].as_u64().unwrap_or(0);
            let (file, kv, peak) = (bytes("file_bytes"), bytes("kv_bytes"), bytes("peak_rss"));
            let before = bytes("start_rss");
            let model = (file + kv).max(1) as f64;
            println!(
                "| {m} | {} | {threads} | {} | {:.0} | {:.1} | {} | {} | {} | {} | {} | {:.2}× | {:.2}× |",
                v["storage"].as_str().unwrap_or(storage),
                v["prompt_tokens"],
                num("prompt_tokens_per_s"),
                num("tokens_per_s"),
                format_bytes(bytes("weight_bytes")),
                format_bytes(file),
                format_bytes(kv),
                format_bytes(before),
                format_bytes(peak),
                peak as f64 / model,
                peak.saturating_sub(before) as f64 / model,
            );
        }
    }
    Ok(())
}

/// One measurement: load in `storage`, generate greedily with no stop ids (always the full
/// count, so runs are comparable), print one JSON line.
fn child(
    model: &str,
    storage: &str,
    prompt_tokens: usize,
    new_tokens: usize,
) -> peft_engine::Result<()> {
    // The process before the model: binary, allocator, threads (the llama.cpp script prints
    // its interpreter's share the same way).
    let start_rss = peft_engine::memory::rss_bytes().unwrap_or(0);
    let t0 = Instant::now();
    let m = LoadedModel::open(&ModelSource::parse(model)?, OpenOptions::default())?;
    let opts = match storage {
        // What chat and `peft generate` use for this model.
        "gguf" => m.generation_storage(LoadOptions::dense(WeightDtype::F32)),
        "f32" => LoadOptions::dense(WeightDtype::F32),
        "bf16" => LoadOptions::dense(WeightDtype::Bf16),
        "q8_0" => LoadOptions::q8_0(),
        other => {
            return Err(peft_engine::Error::invalid(
                "storages",
                format!("`{other}` is not one of gguf, f32, bf16, q8_0"),
            ))
        }
    };
    let d = m.weights(&opts)?;
    let load_s = t0.elapsed().as_secs_f64();
    // A fixed, model-independent prompt: ids cycling over the vocabulary's middle.
    let vocab = m.info.vocab_size as u32;
    let ids: Vec<u32> = (0..prompt_tokens as u32)
        .map(|i| 10 + (i * 7919) % (vocab - 20))
        .collect();
    let g = generate(
        &d,
        &m.tokenizer,
        &ids,
        &GenerateOptions::greedy(new_tokens),
        &[],
        None,
        &mut |_| {},
    )?;
    let c = &m.config;
    // f32 keys and values, [kv_heads, positions, head_dim] per layer.
    let kv = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4;
    let v = serde_json::json!({
        "storage": opts.describe(),
        "prompt_tokens": g.prompt_tokens,
        "prompt_tokens_per_s": g.prompt_tokens_per_s,
        "generated": g.token_ids.len(),
        "tokens_per_s": g.tokens_per_s,
        "load_s": load_s,
        "weight_bytes": d.storage_report().base_bytes,
        "file_bytes": m.info.size_on_disk_bytes,
        "kv_bytes": kv * (g.prompt_tokens + g.token_ids.len()),
        "peak_rss": peak_rss_bytes().unwrap_or(0),
        "start_rss": start_rss,
    });
    println!("{v}");
    Ok(())
}
