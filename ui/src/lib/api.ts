/**
 * Typed wrappers over the shell's commands. Every type comes from `./bindings` (generated from
 * the Rust DTOs); errors are always `ApiError` `{code, message, details}`.
 */
import { Channel, invoke } from "@tauri-apps/api/core";
import type { ApiError } from "./bindings/ApiError";
import type { AppInfo } from "./bindings/AppInfo";
import type { ChatMessage } from "./bindings/ChatMessage";
import type { ChatReply } from "./bindings/ChatReply";
import type { ChatSide } from "./bindings/ChatSide";
import type { DatasetReportDto } from "./bindings/DatasetReportDto";
import type { DownloadProgress } from "./bindings/DownloadProgress";
import type { EstimateDto } from "./bindings/EstimateDto";
import type { ExportKind } from "./bindings/ExportKind";
import type { ExportResult } from "./bindings/ExportResult";
import type { HardwareDto } from "./bindings/HardwareDto";
import type { ModelInfoDto } from "./bindings/ModelInfoDto";
import type { PickWhat } from "./bindings/PickWhat";
import type { PlanDto } from "./bindings/PlanDto";
import type { RunRecord } from "./bindings/RunRecord";
import type { Sampling } from "./bindings/Sampling";
import type { TrainSettings } from "./bindings/TrainSettings";
import type { TrainUpdate } from "./bindings/TrainUpdate";

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
  hardwareScan: () => call<HardwareDto>("hardware_scan"),
  modelOpen: (spec: string, onProgress: (p: DownloadProgress) => void) =>
    call<ModelInfoDto>("model_open", { spec, onProgress: channel(onProgress) }),
  modelCancelDownload: () => call<boolean>("model_cancel_download"),
  modelCurrent: () => call<ModelInfoDto | null>("model_current"),
  dataDemoPath: () => call<string>("data_demo_path"),
  dataInspect: (path: string, maxLen: number, skipBadRows = false) =>
    call<DatasetReportDto>("data_inspect", { path, maxLen, skipBadRows }),
  planRecommend: (base: TrainSettings) => call<PlanDto>("plan_recommend", { base }),
  planEstimate: (settings: TrainSettings) => call<EstimateDto>("plan_estimate", { settings }),
  trainStart: (settings: TrainSettings, resumeRun: string | null, onEvent: (u: TrainUpdate) => void) =>
    call<RunRecord>("train_start", { settings, resumeRun, onEvent: channel(onEvent) }),
  trainCancel: () => call<boolean>("train_cancel"),
  trainStatus: () => call<RunRecord | null>("train_status"),
  runsList: () => call<RunRecord[]>("runs_list"),
  runDelete: (runId: string) => call<null>("run_delete", { runId }),
  chatGenerate: (
    side: ChatSide,
    runId: string | null,
    messages: ChatMessage[],
    sampling: Sampling,
    onText: (t: string) => void,
  ) => call<ChatReply>("chat_generate", { side, runId, messages, sampling, onText: channel(onText) }),
  chatStop: () => call<number>("chat_stop"),
  exportRun: (runId: string, kind: ExportKind, dest: string | null) =>
    call<ExportResult>("export_run", { runId, kind, dest }),
  pickPath: (what: PickWhat) => call<string | null>("pick_path", { what }),
};

export type Api = typeof api;
