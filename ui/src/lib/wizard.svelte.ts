/**
 * The wizard's state, shared by all steps so going back and forth keeps what was entered.
 * Each action calls the shell through `api` (injectable for tests) and records loading and
 * error states the steps render. Every figure and record comes from the engine as it is:
 * the run record in particular is replaced by each update, never rebuilt here.
 */
import { api as realApi, type Api } from "./api";
import type { ErrorReport as ApiError } from "./bindings/ErrorReport";
import type { AppInfo } from "./bindings/AppInfo";
import type { Candidate } from "./bindings/Candidate";
import type { DatasetView } from "./bindings/DatasetView";
import type { ExportKind } from "./bindings/ExportKind";
import type { ExportResult } from "./bindings/ExportResult";
import type { GenerateOptions } from "./bindings/GenerateOptions";
import type { Generation } from "./bindings/Generation";
import type { HardwareView } from "./bindings/HardwareView";
import type { LoraSettings } from "./bindings/LoraSettings";
import type { MethodKind } from "./methods";
import type { OpenedModel } from "./bindings/OpenedModel";
import type { PlanView } from "./bindings/PlanView";
import type { RunRecord } from "./bindings/RunRecord";
import type { Selective } from "./bindings/Selective";
import type { StepStats } from "./bindings/StepStats";
import type { TrainConfig } from "./bindings/TrainConfig";
import type { TrainUpdate } from "./bindings/TrainUpdate";
import type { WhichAdapter } from "./bindings/WhichAdapter";
import { withKind } from "./methods";

export const STEPS = ["Hardware", "Model", "Data", "Plan", "Train", "Chat", "Export"] as const;

export interface Turn {
  user: string;
  tuned: string;
  base: string;
  tunedReply: Generation | null;
  baseReply: Generation | null;
}

export class Wizard {
  step = $state(0);
  info = $state<AppInfo | null>(null);

  hardware = $state<HardwareView | null>(null);
  hardwareLoading = $state(false);
  hardwareError = $state<ApiError | null>(null);

  modelSpec = $state("demo");
  model = $state<OpenedModel | null>(null);
  modelLoading = $state(false);
  modelError = $state<ApiError | null>(null);
  download = $state<{ file: string; done: number; total: number } | null>(null);

  dataPath = $state("");
  dataset = $state<DatasetView | null>(null);
  dataLoading = $state(false);
  dataError = $state<ApiError | null>(null);

  /** The run's settings, as the engine's `TrainConfig`; the shell's demo settings at start. */
  settings = $state<TrainConfig | null>(null);
  /** The LoRA and selective settings kept while another method is chosen. */
  loraDraft = $state<LoraSettings | null>(null);
  selectiveDraft = $state<Selective>("norm");
  plan = $state<PlanView | null>(null);
  planLoading = $state(false);
  planError = $state<ApiError | null>(null);
  estimate = $state<Candidate | null>(null);
  estimateError = $state<ApiError | null>(null);
  planAccepted = $state(false);

  run = $state<RunRecord | null>(null);
  training = $state(false);
  last = $state<StepStats | null>(null);
  trainError = $state<ApiError | null>(null);
  runs = $state<RunRecord[]>([]);
  /** Bumped on every update so the chart redraws. */
  curveVersion = $state(0);

  chatRunId = $state<string | null>(null);
  chatWhich = $state<WhichAdapter>("final");
  sampling = $state<GenerateOptions>({
    max_new_tokens: 120, temperature: 0.7, top_k: 40, top_p: 0.95, repeat_penalty: 1.1, repeat_last_n: 64, seed: 42,
  });
  turns = $state<Turn[]>([]);
  streaming = $state(false);
  chatError = $state<ApiError | null>(null);

  exportResult = $state<ExportResult | null>(null);
  exportLoading = $state<ExportKind | null>(null);
  exportError = $state<ApiError | null>(null);
  exportDest = $state("");
  exportWhich = $state<WhichAdapter>("final");

  constructor(readonly api: Api = realApi) {}

  /** First start: preselect the bundled demo model and dataset so everything works offline. */
  async start() {
    try {
      this.info = await this.api.appInfo();
      this.useSettings(this.info.demo_settings);
    } catch {
      /* the footer just shows less; the Plan step waits for settings */
    }
    void this.scanHardware();
    // A reload of the window while a run trains: follow it again instead of showing it idle.
    if (await this.attachTraining()) return;
    if (await this.openModel("demo")) await this.useDemoDataset();
    void this.loadRuns();
  }

  /** Follows the job the engine is running, if any (the window was reloaded mid-run). */
  async attachTraining(): Promise<boolean> {
    try {
      const rec = await this.api.trainAttach((u) => this.onTrain(u));
      if (!rec) return false;
      this.run = rec;
      this.training = true;
      this.step = STEPS.indexOf("Train");
      // The wizard's choices are the run's: its model (the engine still has it open), data
      // and settings.
      this.useSettings(rec.config);
      void this.loadRuns();
      if (await this.openModel(rec.model)) await this.inspect(rec.data);
      return true;
    } catch {
      return false;
    }
  }

  go(step: number) {
    this.step = Math.max(0, Math.min(STEPS.length - 1, step));
  }

  /** Adopts `c` (a starting point or a planner candidate), remembering its method's settings. */
  useSettings(c: TrainConfig) {
    this.settings = structuredClone($state.snapshot(c)) as TrainConfig;
    const m = c.method;
    if (m.kind === "lora" || m.kind === "qlora") {
      const { kind: _, ...lora } = m;
      this.loraDraft = lora;
    } else if (m.kind === "selective") {
      this.selectiveDraft = m.what;
    }
  }

  /** Switches the method, keeping the LoRA/selective settings entered so far. */
  setMethod(kind: MethodKind) {
    if (!this.settings) return;
    const m = this.settings.method;
    if (m.kind === "lora" || m.kind === "qlora") {
      const { kind: _, ...lora } = m;
      this.loraDraft = lora;
    } else if (m.kind === "selective") {
      this.selectiveDraft = m.what;
    }
    this.settings.method = withKind(kind, this.loraDraft, this.selectiveDraft);
    // Only LoRA and QLoRA have a frozen base to multiply in bf16 (the engine refuses it otherwise).
    if (kind !== "lora" && kind !== "qlora") this.settings.bf16_compute = false;
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
      this.dataset = await this.api.dataInspect(path, this.settings?.seq_len ?? 256, false);
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
    if (!this.settings) return;
    this.planLoading = true;
    this.planError = null;
    try {
      this.plan = await this.api.planRecommend($state.snapshot(this.settings) as TrainConfig);
      await this.updateEstimate();
    } catch (e) {
      this.planError = e as ApiError;
    } finally {
      this.planLoading = false;
    }
  }

  /** Takes candidate `i` of the plan (its full settings come from the engine). */
  choose(i: number) {
    const c = this.plan?.configs[i];
    if (!c) return;
    this.useSettings(c);
    void this.updateEstimate();
  }

  async updateEstimate() {
    if (!this.settings) return;
    try {
      this.estimate = await this.api.planEstimate($state.snapshot(this.settings) as TrainConfig);
      this.estimateError = null;
    } catch (e) {
      this.estimateError = e as ApiError;
    }
  }

  async startTraining(resumeRun: string | null = null) {
    if (!this.settings) return;
    this.trainError = null;
    this.last = null;
    try {
      const rec = await this.api.trainStart($state.snapshot(this.settings) as TrainConfig, resumeRun, (u) => this.onTrain(u));
      this.run = rec;
      this.training = true;
    } catch (e) {
      this.trainError = e as ApiError;
    }
  }

  onTrain(u: TrainUpdate) {
    this.run = u.record;
    if (u.kind === "finished") {
      this.training = false;
      if (u.record.status === "failed") this.trainError = u.record.error;
      if (u.record.status === "completed") this.chatRunId = u.record.id;
      void this.loadRuns();
    } else if (u.event.kind === "step") {
      const { kind: _, ...stats } = u.event;
      this.last = stats;
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
    const sampling = $state.snapshot(this.sampling) as GenerateOptions;
    const one = async (side: "tuned" | "base") => {
      try {
        const reply = await this.api.chatGenerate(side, this.chatRunId, this.chatWhich, history(side), sampling, (piece) => {
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
      this.exportResult = await this.api.exportRun(runId, this.exportWhich, kind, this.exportDest || null);
    } catch (e) {
      this.exportError = e as ApiError;
    } finally {
      this.exportLoading = null;
    }
  }
}
