/**
 * The wizard's state, shared by all steps so going back and forth keeps what was entered.
 * Each action calls the shell through `api` (injectable for tests) and records loading and
 * error states the steps render.
 */
import { api as realApi, type Api } from "./api";
import type { ApiError } from "./bindings/ApiError";
import type { AppInfo } from "./bindings/AppInfo";
import type { ChatReply } from "./bindings/ChatReply";
import type { DatasetReportDto } from "./bindings/DatasetReportDto";
import type { EstimateDto } from "./bindings/EstimateDto";
import type { ExportKind } from "./bindings/ExportKind";
import type { ExportResult } from "./bindings/ExportResult";
import type { HardwareDto } from "./bindings/HardwareDto";
import type { ModelInfoDto } from "./bindings/ModelInfoDto";
import type { PlanDto } from "./bindings/PlanDto";
import type { RunRecord } from "./bindings/RunRecord";
import type { Sampling } from "./bindings/Sampling";
import type { TrainSettings } from "./bindings/TrainSettings";
import type { TrainUpdate } from "./bindings/TrainUpdate";

export const STEPS = ["Hardware", "Model", "Data", "Plan", "Train", "Chat", "Export"] as const;

type StepUpdate = Extract<TrainUpdate, { kind: "step" }>;

export interface Turn {
  user: string;
  tuned: string;
  base: string;
  tunedReply: ChatReply | null;
  baseReply: ChatReply | null;
}

/** Used until the shell reports its own demo settings (and in tests). */
export const FALLBACK_SETTINGS: TrainSettings = {
  method: "lora", rank: 16, alpha: 32, dropout: 0, targets: [], seq_len: 128, batch_size: 4,
  grad_accum: 1, lr: 3e-3, epochs: 8, max_steps: null, warmup_steps: 5, eval_every: 10,
  save_every: 0, grad_checkpointing: false, scheduler: "cosine", seed: 42,
};

export class Wizard {
  step = $state(0);
  info = $state<AppInfo | null>(null);

  hardware = $state<HardwareDto | null>(null);
  hardwareLoading = $state(false);
  hardwareError = $state<ApiError | null>(null);

  modelSpec = $state("demo");
  model = $state<ModelInfoDto | null>(null);
  modelLoading = $state(false);
  modelError = $state<ApiError | null>(null);
  download = $state<{ file: string; done: number; total: number } | null>(null);

  dataPath = $state("");
  dataset = $state<DatasetReportDto | null>(null);
  dataLoading = $state(false);
  dataError = $state<ApiError | null>(null);

  settings = $state<TrainSettings>({ ...FALLBACK_SETTINGS });
  plan = $state<PlanDto | null>(null);
  planLoading = $state(false);
  planError = $state<ApiError | null>(null);
  estimate = $state<EstimateDto | null>(null);
  estimateError = $state<ApiError | null>(null);
  planAccepted = $state(false);

  run = $state<RunRecord | null>(null);
  training = $state(false);
  last = $state<StepUpdate | null>(null);
  trainError = $state<ApiError | null>(null);
  runs = $state<RunRecord[]>([]);
  /** Bumped on every new point so the chart redraws without copying arrays. */
  curveVersion = $state(0);

  chatRunId = $state<string | null>(null);
  sampling = $state<Sampling>({ temperature: 0.7, top_k: 40, top_p: 0.95, repeat_penalty: 1.1, max_new_tokens: 120, seed: 42 });
  turns = $state<Turn[]>([]);
  streaming = $state(false);
  chatError = $state<ApiError | null>(null);

  exportResult = $state<ExportResult | null>(null);
  exportLoading = $state<ExportKind | null>(null);
  exportError = $state<ApiError | null>(null);
  exportDest = $state("");

  constructor(private api: Api = realApi) {}

  /** First start: preselect the bundled demo model and dataset so everything works offline. */
  async start() {
    try {
      this.info = await this.api.appInfo();
      this.settings = { ...this.info.demo_settings };
    } catch {
      /* the footer just shows less */
    }
    void this.scanHardware();
    if (await this.openModel("demo")) await this.useDemoDataset();
    void this.loadRuns();
  }

  go(step: number) {
    this.step = Math.max(0, Math.min(STEPS.length - 1, step));
  }

  async scanHardware() {
    this.hardwareLoading = true;
    this.hardwareError = null;
    try {
      this.hardware = await this.api.hardwareScan();
    } catch (e) {
      this.hardwareError = e as ApiError;
    } finally {
      this.hardwareLoading = false;
    }
  }

  async openModel(spec: string): Promise<boolean> {
    this.modelSpec = spec;
    this.modelLoading = true;
    this.modelError = null;
    this.download = null;
    try {
      this.model = await this.api.modelOpen(spec, (p) => {
        if (p.kind === "start") this.download = { file: p.file, done: 0, total: p.total_bytes };
        else if (p.kind === "progress") this.download = { file: p.file, done: p.bytes_done, total: p.total_bytes };
        else if (p.kind === "loading") this.download = null;
      });
      // Data and plan were measured with the previous tokenizer.
      this.dataset = null;
      this.plan = null;
      this.estimate = null;
      this.planAccepted = false;
      return true;
    } catch (e) {
      this.modelError = e as ApiError;
      return false;
    } finally {
      this.modelLoading = false;
      this.download = null;
    }
  }

  cancelDownload() {
    void this.api.modelCancelDownload();
  }

  async useDemoDataset() {
    try {
      const path = await this.api.dataDemoPath();
      await this.inspect(path);
    } catch (e) {
      this.dataError = e as ApiError;
    }
  }

  async inspect(path: string) {
    this.dataPath = path;
    this.dataLoading = true;
    this.dataError = null;
    try {
      this.dataset = await this.api.dataInspect(path, this.settings.seq_len, false);
      this.plan = null;
      this.planAccepted = false;
    } catch (e) {
      this.dataError = e as ApiError;
      this.dataset = null;
    } finally {
      this.dataLoading = false;
    }
  }

  async recommend() {
    this.planLoading = true;
    this.planError = null;
    try {
      this.plan = await this.api.planRecommend(this.settings);
      await this.updateEstimate();
    } catch (e) {
      this.planError = e as ApiError;
    } finally {
      this.planLoading = false;
    }
  }

  choose(settings: TrainSettings) {
    this.settings = { ...settings };
    void this.updateEstimate();
  }

  async updateEstimate() {
    try {
      this.estimate = await this.api.planEstimate(this.settings);
      this.estimateError = null;
    } catch (e) {
      this.estimateError = e as ApiError;
    }
  }

  async startTraining(resumeRun: string | null = null) {
    this.trainError = null;
    this.last = null;
    try {
      const rec = await this.api.trainStart(this.settings, resumeRun, (u) => this.onTrain(u));
      this.run = { ...rec };
      this.training = true;
    } catch (e) {
      this.trainError = e as ApiError;
    }
  }

  onTrain(u: TrainUpdate) {
    const r = this.run;
    if (u.kind === "finished") {
      this.run = u.record;
      this.training = false;
      if (u.record.status === "failed") this.trainError = u.record.error;
      if (u.record.status === "completed") this.chatRunId = u.record.id;
      this.curveVersion++;
      void this.loadRuns();
      return;
    }
    if (!r) return;
    if (u.kind === "started") {
      r.total_steps = u.total_steps;
      r.losses = r.losses.filter((p) => p[0] <= u.start_step);
      r.eval_losses = r.eval_losses.filter((p) => p[0] <= u.start_step);
    } else if (u.kind === "step") {
      this.last = u;
      r.step = u.step;
      r.total_steps = u.total_steps;
      r.losses.push([u.step, u.loss]);
    } else if (u.kind === "eval") {
      r.eval_losses.push([u.step, u.loss]);
    }
    this.curveVersion++;
  }

  pause() {
    void this.api.trainCancel();
  }

  async loadRuns() {
    try {
      this.runs = await this.api.runsList();
      const done = this.runs.find((r) => r.status === "completed");
      if (!this.chatRunId && done) this.chatRunId = done.id;
    } catch {
      this.runs = [];
    }
  }

  async deleteRun(id: string) {
    await this.api.runDelete(id);
    if (this.chatRunId === id) this.chatRunId = null;
    await this.loadRuns();
  }

  async send(prompt: string) {
    if (!prompt.trim() || this.streaming) return;
    this.chatError = null;
    const turn: Turn = { user: prompt, tuned: "", base: "", tunedReply: null, baseReply: null };
    this.turns.push(turn);
    const t = this.turns[this.turns.length - 1];
    this.streaming = true;
    const history = (side: "tuned" | "base") =>
      this.turns.flatMap((x) => {
        const msgs = [{ role: "user", content: x.user }];
        if (x !== t) msgs.push({ role: "assistant", content: x[side] });
        return msgs;
      });
    const one = async (side: "tuned" | "base") => {
      try {
        const reply = await this.api.chatGenerate(side, this.chatRunId, history(side), this.sampling, (piece) => {
          t[side] += piece;
        });
        if (side === "tuned") t.tunedReply = reply;
        else t.baseReply = reply;
      } catch (e) {
        this.chatError = e as ApiError;
      }
    };
    await Promise.all([this.chatRunId ? one("tuned") : Promise.resolve(), one("base")]);
    this.streaming = false;
  }

  stopChat() {
    void this.api.chatStop();
  }

  clearChat() {
    this.turns = [];
  }

  async exportRun(kind: ExportKind, runId: string) {
    this.exportLoading = kind;
    this.exportError = null;
    try {
      this.exportResult = await this.api.exportRun(runId, kind, this.exportDest || null);
    } catch (e) {
      this.exportError = e as ApiError;
    } finally {
      this.exportLoading = null;
    }
  }
}
