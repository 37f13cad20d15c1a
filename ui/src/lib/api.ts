/**
 * Typed wrappers over the shell's commands. Every type comes from `./bindings` (generated from
 * the engine's Rust types and the shell's few wrappers); errors are always `ApiError`
 * `{code, message, details}`.
 */
import { Channel, invoke } from "@tauri-apps/api/core";
import type { ErrorReport as ApiError } from "./bindings/ErrorReport";
import type { AppInfo } from "./bindings/AppInfo";
import type { Candidate } from "./bindings/Candidate";
import type { ChatSide } from "./bindings/ChatSide";
import type { DatasetView } from "./bindings/DatasetView";
import type { DownloadEvent } from "./bindings/DownloadEvent";
import type { ExportFormat } from "./bindings/ExportFormat";
import type { ExportKind } from "./bindings/ExportKind";
import type { ExportProgress } from "./bindings/ExportProgress";
import type { ExportReport } from "./bindings/ExportReport";
import type { ExportResult } from "./bindings/ExportResult";
import type { GenerateOptions } from "./bindings/GenerateOptions";
import type { GgufQuant } from "./bindings/GgufQuant";
import type { Generation } from "./bindings/Generation";
import type { HardwareView } from "./bindings/HardwareView";
import type { Message } from "./bindings/Message";
import type { OpenedModel } from "./bindings/OpenedModel";
import type { PickWhat } from "./bindings/PickWhat";
import type { PlanView } from "./bindings/PlanView";
import type { RecipeEngine } from "./bindings/RecipeEngine";
import type { RecipeEngineChoice } from "./bindings/RecipeEngineChoice";
import type { RecipeReport } from "./bindings/RecipeReport";
import type { RunRecord } from "./bindings/RunRecord";
import type { TrainConfig } from "./bindings/TrainConfig";
import type { TrainUpdate } from "./bindings/TrainUpdate";
import type { WhichAdapter } from "./bindings/WhichAdapter";

/** Turns anything thrown by `invoke` into an ApiError (the shell always sends one). */
export function toApiError(e: unknown): ApiError {
  if (e && typeof e === "object" && "code" in e && "message" in e) return e as ApiError;
  return { code: "Internal", message: String(e), details: null };
}

async function call<T>(cmd: string, args?: Record<string, unknown>): Promise<T> {
  try {
    return await invoke<T>(cmd, args);
  } catch (e) {
    throw toApiError(e);
  }
}

function channel<T>(on: (m: T) => void): Channel<T> {
  const c = new Channel<T>();
  c.onmessage = on;
  return c;
}

export const api = {
  appInfo: () => call<AppInfo>("app_info"),
  hardwareScan: () => call<HardwareView>("hardware_scan"),
  modelOpen: (spec: string, onProgress: (p: DownloadEvent) => void) =>
    call<OpenedModel>("model_open", { spec, onProgress: channel(onProgress) }),
  modelCancelDownload: () => call<boolean>("model_cancel_download"),
  modelCurrent: () => call<OpenedModel | null>("model_current"),
  dataDemoPath: () => call<string>("data_demo_path"),
  dataInspect: (path: string, maxLen: number, skipBadRows = false) =>
    call<DatasetView>("data_inspect", { path, maxLen, skipBadRows }),
  planRecommend: (base: TrainConfig) => call<PlanView>("plan_recommend", { base }),
  planEstimate: (config: TrainConfig) => call<Candidate>("plan_estimate", { config }),
  trainStart: (config: TrainConfig, resumeRun: string | null, onEvent: (u: TrainUpdate) => void) =>
    call<RunRecord>("train_start", { config, resumeRun, onEvent: channel(onEvent) }),
  trainCancel: () => call<boolean>("train_cancel"),
  trainStatus: () => call<RunRecord | null>("train_status"),
  /** Re-attaches to the running job after a reload: its progress comes to `onEvent` from now on. */
  trainAttach: (onEvent: (u: TrainUpdate) => void) => call<RunRecord | null>("train_attach", { onEvent: channel(onEvent) }),
  runsList: () => call<RunRecord[]>("runs_list"),
  runDelete: (runId: string) => call<null>("run_delete", { runId }),
  chatGenerate: (
    side: ChatSide,
    runId: string | null,
    which: WhichAdapter,
    messages: Message[],
    sampling: GenerateOptions,
    onText: (t: string) => void,
  ) => call<Generation>("chat_generate", { side, runId, which, messages, sampling, onText: channel(onText) }),
  chatStop: () => call<number>("chat_stop"),
  exportRun: (runId: string, which: WhichAdapter, kind: ExportKind, dest: string | null) =>
    call<ExportResult>("export_run", { runId, which, kind, dest }),
  exportGguf: (
    runId: string | null,
    which: WhichAdapter,
    format: ExportFormat,
    quant: GgufQuant,
    dest: string | null,
    onProgress: (p: ExportProgress) => void,
  ) => call<ExportReport>("export_gguf", { runId, which, format, quant, dest, onProgress: channel(onProgress) }),
  exportGgufCancel: () => call<boolean>("export_gguf_cancel"),
  pickPath: (what: PickWhat) => call<string | null>("pick_path", { what }),
  recipeEngines: () => call<RecipeEngineChoice[]>("recipe_engines"),
  recipeExport: (engine: RecipeEngine, config: TrainConfig, dest: string | null) =>
    call<RecipeReport>("recipe_export", { engine, config, dest }),
  adapterImport: (dir: string) => call<RunRecord>("adapter_import", { dir }),
};

export type Api = typeof api;
