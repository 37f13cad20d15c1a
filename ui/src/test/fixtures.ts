/** Typed sample payloads (shaped by the generated bindings) for unit tests. */
import type { Api } from "../lib/api";
import type { DatasetReportDto } from "../lib/bindings/DatasetReportDto";
import type { EstimateDto } from "../lib/bindings/EstimateDto";
import type { HardwareDto } from "../lib/bindings/HardwareDto";
import type { ModelInfoDto } from "../lib/bindings/ModelInfoDto";
import type { PlanDto } from "../lib/bindings/PlanDto";
import type { RunRecord } from "../lib/bindings/RunRecord";
import { FALLBACK_SETTINGS } from "../lib/wizard.svelte";

export const hardware: HardwareDto = {
  cpu_model: "Test CPU", arch: "x86_64", physical_cores: 2, logical_cores: 2, simd: ["AVX2"],
  ram_total_bytes: 8 * 2 ** 30, ram_available_bytes: 6 * 2 ** 30, gpus: [], gpu_notes: ["NVIDIA: no driver"],
  device: "cpu", summary: "Training runs on the CPU (2 cores, 6.00 GiB of RAM free): LoRA fits.",
};

export const model: ModelInfoDto = {
  spec: "demo", source: "bundled demo model (stories260K)", bundled: true, architecture: "llama",
  parameters: 260_000, dtype_on_disk: "F32", size_on_disk_bytes: 1_000_000, context_length: 512,
  vocab_size: 512, layers: 5, hidden_size: 64, has_chat_template: false, chat_template: "{{ bos_token }}",
};

export const dataset: DatasetReportDto = {
  path: "/data/bolt-stories.jsonl", file_name: "bolt-stories.jsonl", bundled: true, format: "Chat", rows: 56,
  skipped: 0, errors: [], fallback_template: true, max_len: 128, min_tokens: 40, p50_tokens: 70, p95_tokens: 90,
  max_tokens: 100, mean_tokens: 70, histogram: [{ lo: 40, hi: 70, count: 30 }, { lo: 70, hi: 101, count: 26 }],
  truncated: 0, truncated_share: 0, trained_tokens: 3000, total_tokens: 4000,
  example: [{ text: "### Instruction:\nTell me a story.\n\n### Response:\n", trained: false }, { text: "Bolt was a little robot.", trained: true }],
};

export function estimate(fits = true): EstimateDto {
  return {
    peak_bytes: 40 * 2 ** 20, peak_phase: "logits backward",
    bands: [{ band: "weights", bytes: 2 ** 20 }, { band: "activations", bytes: 9 * 2 ** 20 }, { band: "overhead", bytes: 30 * 2 ** 20 }],
    lines: [], trainable_params: 20_000, total_params: 260_000, tokens_per_s: 5000, epoch_seconds: 1.5,
    fits, headroom_bytes: fits ? 2 ** 30 : -(2 ** 20), truncated_share: 0,
    reason: fits ? "LoRA at 128 tokens needs 40 MiB" : "LoRA at 128 tokens needs 40 MiB, you have 1 MiB free",
  };
}

export const plan: PlanDto = {
  device: "cpu", available_bytes: 6 * 2 ** 30, margin_bytes: 2 ** 28, usable_bytes: 5 * 2 ** 30,
  summary: "LoRA at 128 tokens needs 40 MiB.",
  candidates: [{ label: "LoRA", settings: FALLBACK_SETTINGS, estimate: estimate() }],
};

export function run(status: RunRecord["status"] = "completed"): RunRecord {
  return {
    id: "run-1-1", model: "demo", data: dataset.path, settings: FALLBACK_SETTINGS, status, started_at: 1, finished_at: 2,
    step: 10, total_steps: 10, losses: [[1, 3.2], [10, 1.5]], eval_losses: [[10, 1.7]], error: null, dir: "/runs/run-1-1",
  };
}

/** An Api whose every call succeeds with the fixtures; override what a test needs. */
export function fakeApi(over: Partial<Api> = {}): Api {
  const api: Api = {
    appInfo: async () => ({ version: "0.1.0", data_dir: "/data", default_model: "demo", demo_settings: FALLBACK_SETTINGS }),
    hardwareScan: async () => hardware,
    modelOpen: async () => model,
    modelCancelDownload: async () => true,
    modelCurrent: async () => model,
    dataDemoPath: async () => dataset.path,
    dataInspect: async () => dataset,
    planRecommend: async () => plan,
    planEstimate: async () => estimate(),
    trainStart: async () => run("running"),
    trainCancel: async () => true,
    trainStatus: async () => null,
    runsList: async () => [],
    runDelete: async () => null,
    chatGenerate: async (_side, _run, _msgs, _s, onText) => {
      onText("Bolt ");
      onText("loves apples.");
      return { text: "Bolt loves apples.", stop: "end_of_text", tokens: 5, prompt_tokens: 10, tokens_per_s: 100 };
    },
    chatStop: async () => 1,
    exportRun: async () => ({ kind: "adapter", dir: "/exports/a", files: [{ name: "adapter_config.json", bytes: 300 }], usage: "Use it." }),
    pickPath: async () => null,
  };
  return { ...api, ...over };
}
