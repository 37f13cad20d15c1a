/**
 * The method picker's view of the engine's `Method` union: its kinds, how each is labelled, and
 * how the form's fields become a `Method` value. What a method does is the engine's business.
 */
import type { LoraSettings } from "./bindings/LoraSettings";
import type { Method } from "./bindings/Method";
import type { Selective } from "./bindings/Selective";

export type MethodKind = Method["kind"];

export const METHOD_LABELS: Record<MethodKind, string> = {
  lora: "LoRA",
  qlora: "QLoRA (NF4 base)",
  selective: "Selective (existing weights)",
  full: "Full fine-tuning",
};

/** LoRA settings when none were entered yet: the engine's documented defaults. */
export const DEFAULT_LORA: LoraSettings = {
  rank: 8, alpha: 16, dropout: 0.05,
  targets: ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
  layers: null, rslora: false,
};

/** The method of `kind` with the form's LoRA or selective settings. */
export function withKind(kind: MethodKind, lora: LoraSettings | null, what: Selective): Method {
  switch (kind) {
    case "lora":
    case "qlora":
      return { kind, ...(lora ?? DEFAULT_LORA) };
    case "selective":
      return { kind, what };
    case "full":
      return { kind };
  }
}

/** `norm`, `bias`, `last:N` or `modules:PATTERN`, as the CLI writes a selection. */
export function selectiveText(s: Selective): string {
  if (typeof s === "string") return s;
  if ("last_blocks" in s) return `last:${s.last_blocks}`;
  return `modules:${s.modules}`;
}

/** A short description of a run's method for tables. */
export function describeMethod(m: Method): string {
  switch (m.kind) {
    case "lora":
    case "qlora":
      return `${METHOD_LABELS[m.kind].split(" ")[0]} r${m.rank}`;
    case "selective":
      return `selective ${selectiveText(m.what)}`;
    case "full":
      return "full";
  }
}
