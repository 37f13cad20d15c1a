/** Typed sample payloads (shaped by the generated bindings) for unit tests. */
import type { Api } from "../lib/api";
import type { Candidate } from "../lib/bindings/Candidate";
import type { DatasetView } from "../lib/bindings/DatasetView";
import type { Estimate } from "../lib/bindings/Estimate";
import type { HardwareView } from "../lib/bindings/HardwareView";
import type { OpenedModel } from "../lib/bindings/OpenedModel";
import type { PlanView } from "../lib/bindings/PlanView";
import type { RunRecord } from "../lib/bindings/RunRecord";
import type { TrainConfig } from "../lib/bindings/TrainConfig";

/** The shape of the engine's demo settings (`TrainConfig::demo`). */
export const settings: TrainConfig = {
  method: { kind: "lora", rank: 16, alpha: 32, dropout: 0, targets: ["q_proj", "v_proj"], layers: null, rslora: false },
  seq_len: 128, batch_size: 4, grad_accum: 1, lr: 3e-3, scheduler: "cosine", warmup_steps: 5, epochs: 8, max_steps: null,
  eval_every: 10, save_every: 0, seed: 42, grad_checkpointing: false, max_grad_norm: 1, val_fraction: 0.1,
  adamw: { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0 }, train_on: "assistant", skip_bad_rows: false,
  adapter_dtype: "f32", weight_dtype: "F32",
};

export const hardware: HardwareView = {
  hardware: {
    cpu: { model: "Test CPU", arch: "x86_64", physical_cores: 2, logical_cores: 2, features: { avx2: true, avx512f: false, fma: true, neon: false, amx_bf16: false, avx512_bf16: false } },
    memory: { total_bytes: 8 * 2 ** 30, available_bytes: 6 * 2 ** 30, swap_total_bytes: 0, swap_free_bytes: 0 },
    gpu: { backends: { cuda: false, metal: false }, gpus: [], notes: ["No NVIDIA driver found (NVIDIA GPUs need the NVIDIA driver; none is installed)."] },
    assumed: false,
  },
  verdict: { device: "cpu", summary: "Training runs on the CPU (2 cores, 6.00 GiB of RAM free): LoRA fits." },
};

export const model: OpenedModel = {
  spec: "demo",
  info: {
    source: "bundled demo model (stories260K)", bundled: true, architecture: "llama", parameters: 260_000,
    dtype_on_disk: "F32", size_on_disk_bytes: 1_000_000, context_length: 512, vocab_size: 512, layers: 5,
    hidden_size: 64, has_chat_template: false, chat_template: "{{ bos_token }}",
    config: {
      arch: "llama", vocab_size: 512, hidden_size: 64, intermediate_size: 172, num_hidden_layers: 5,
      num_attention_heads: 8, num_key_value_heads: 4, head_dim: 8, rms_norm_eps: 1e-5, rope_theta: 10000,
      max_position_embeddings: 512, tie_word_embeddings: true, qkv_bias: false, o_bias: false, mlp_bias: false,
      bos_token_id: 1, eos_token_ids: [2], sliding_window: null, torch_dtype: "float32",
      hidden_act: "silu", partial_rotary_factor: null, rope_scaling: null, rope_local_theta: null, layer_windows: [],
      query_pre_attn_scalar: null, final_logit_softcapping: null,
    },
  },
};

export const dataset: DatasetView = {
  path: "/data/bolt-stories.jsonl", bundled: true,
  report: {
    file: "/data/bolt-stories.jsonl", format: "Chat", rows: 56, skipped: 0, errors: [], fallback_template: true,
    max_len: 128, lengths: { min: 40, p50: 70, p95: 90, max: 100, mean: 70 },
    histogram: [[40, 70, 30], [70, 101, 26]], truncated: 0, truncated_share: 0, trained_tokens: 3000, total_tokens: 4000,
    example: [{ text: "### Instruction:\nTell me a story.\n\n### Response:\n", trained: false }, { text: "Bolt was a little robot.", trained: true }],
  },
};

export function estimate(): Estimate {
  return {
    lines: [{ name: "runtime", band: "overhead", bytes: 30 * 2 ** 20, explanation: "runtime" }],
    bands: [
      { band: "weights", bytes: 2 ** 20 }, { band: "adapters", bytes: 0 }, { band: "optimizer", bytes: 0 },
      { band: "activations", bytes: 9 * 2 ** 20 }, { band: "logits", bytes: 0 }, { band: "overhead", bytes: 30 * 2 ** 20 },
    ],
    peak_bytes: 40 * 2 ** 20, peak_phase: "logits backward", phases: [], device_bytes: 0, host_bytes: 40 * 2 ** 20,
    params: { total: 260_000, trainable: 20_000 }, flops_per_token: 1e6, tokens_per_s: 5000,
    step_time: { gemm_s: 0.01, memory_s: 0.01, optimizer_s: 0.001, fixed_s: 0.001 },
  };
}

export function candidate(fits = true): Candidate {
  return {
    label: "LoRA",
    request: {
      method: settings.method, seq_len: 128, batch_size: 4, grad_accum: 1, grad_checkpointing: false,
      weight_dtype: "F32", device: "cpu", evaluation: true, throughput: { gemm_gflops: 100, mem_gbps: 40 },
    },
    truncated_share: 0, estimate: estimate(), fits, headroom_bytes: fits ? 2 ** 30 : -(2 ** 20), tokens_per_s: 5000,
    epoch_seconds: 1.5,
    reason: fits ? "LoRA at 128 tokens needs 40 MiB" : "LoRA at 128 tokens needs 40 MiB, you have 1 MiB free",
  };
}

export const plan: PlanView = {
  recommendation: {
    device: "cpu", available_bytes: 6 * 2 ** 30, margin_bytes: 2 ** 28, usable_bytes: 5 * 2 ** 30,
    candidates: [candidate()], summary: "LoRA at 128 tokens needs 40 MiB.", elsewhere: null,
  },
  configs: [{ ...settings, method: { ...settings.method, rank: 8 } as TrainConfig["method"] }],
  devices: [
    { choice: "auto", label: "Automatic: the CPU", usable: true },
    { choice: "cpu", label: "CPU — 6.0 GiB free", usable: true },
    { choice: "cuda:0", label: "NVIDIA RTX 4060 — 7.6 GiB free", usable: false, why_not: "this build has no CUDA support (build with `make cuda`)" },
  ],
};

export function run(status: RunRecord["status"] = "completed"): RunRecord {
  return {
    id: "run-1-1", model: "demo", data: dataset.path, config: settings, status, started_at: 1, finished_at: 2,
    step: 10, total_steps: 10, losses: [[1, 3.2], [10, 1.5]], eval_losses: [[5, 1.6], [10, 1.7]],
    best: { step: 5, eval_loss: 1.6 },
    storage: { nf4_linears: 0, dense_linears: 35, gguf_linears: 0, trainable_linears: 0, adapted_linears: 35, base_bytes: 1_000_000 },
    memory: { baseline_rss_bytes: 200 * 2 ** 20, planned_peak_bytes: 60 * 2 ** 20, already_loaded_bytes: 20 * 2 ** 20, planned_growth_bytes: 40 * 2 ** 20, peak_growth_bytes: 38 * 2 ** 20 },
    error: null, dir: "/runs/run-1-1", origin: { kind: "local" },
  };
}

/** An Api whose every call succeeds with the fixtures; override what a test needs. */
export function fakeApi(over: Partial<Api> = {}): Api {
  const api: Api = {
    appInfo: async () => ({ version: "0.1.0", data_dir: "/data", default_model: "demo", demo_settings: settings }),
    hardwareScan: async () => hardware,
    modelOpen: async () => model,
    modelCancelDownload: async () => true,
    modelCurrent: async () => model,
    dataDemoPath: async () => dataset.path,
    dataInspect: async () => dataset,
    planRecommend: async () => plan,
    planEstimate: async () => candidate(),
    trainStart: async () => run("running"),
    trainCancel: async () => true,
    trainStatus: async () => null,
    trainAttach: async () => null,
    runsList: async () => [],
    runDelete: async () => null,
    chatGenerate: async (_side, _run, _which, _msgs, _s, onText) => {
      onText("Bolt ");
      onText("loves apples.");
      return { text: "Bolt loves apples.", token_ids: [1, 2, 3, 4, 5], prompt_tokens: 10, stop: "end_of_text", prompt_tokens_per_s: 500, tokens_per_s: 100 };
    },
    chatStop: async () => 1,
    exportRun: async () => ({ kind: "adapter", which: "final", dir: "/exports/a", files: [{ name: "adapter_config.json", bytes: 300 }], usage: "Use it." }),
    exportGguf: async () => Promise.reject({ code: "Internal", message: "not faked", details: null }),
    exportGgufCancel: async () => false,
    pickPath: async () => null,
    recipeEngines: async () => [
      { engine: "axolotl", label: "Axolotl", config_file: "axolotl.yaml" },
      { engine: "llamafactory", label: "LLaMA-Factory", config_file: "llamafactory.yaml" },
      { engine: "trl", label: "TRL", config_file: "trl.yaml" },
    ],
    recipeExport: async () => { throw { code: "Internal", message: "not faked", details: null }; },
    adapterImport: async () => { throw { code: "Internal", message: "not faked", details: null }; },
  };
  return { ...api, ...over };
}
