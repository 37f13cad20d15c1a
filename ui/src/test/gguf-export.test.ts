import { afterEach, describe, expect, it } from "vitest";
import { cleanup, fireEvent, render, screen } from "@testing-library/svelte";
import { tick } from "svelte";
import GgufExport from "../steps/GgufExport.svelte";
import type { ExportReport } from "../lib/bindings/ExportReport";
import type { ExportProgress } from "../lib/bindings/ExportProgress";

afterEach(() => cleanup());

const report: ExportReport = {
  format: "ollama",
  files: ["/x/bolt-Q8_0.gguf", "/x/Modelfile", "/x/README.md"],
  gguf: { path: "/x/bolt-Q8_0.gguf", bytes: 2048, tensors: 12, fallbacks: 0, types: { F32: 5, Q8_0: 7 }, quant: "q8_0" },
  adapter: null,
  ollama_template: { family: "alpaca", template: "{{ .Prompt }}", system: null },
  self_check: {
    file: "/x/bolt-Q8_0.gguf",
    strict: false,
    max_new_tokens: 32,
    prompts: [
      {
        prompt: "Hello! Who are you?", prompt_tokens: 9, prompt_text: "", prompt_ids: [], prompt_matches: true,
        tuned_tokens: [5, 6, 7], exported_tokens: [5, 6, 7], agreeing_tokens: 3, tuned_stopped: true,
        exported_stopped: true, tuned_text: "", exported_text: "", skipped: null,
      },
    ],
    problems: [],
  },
  next_steps: ["ollama create stories260k-run-1 -f /x/Modelfile"],
};

async function settle() {
  for (let i = 0; i < 5; i++) await tick();
}

describe("GGUF export", () => {
  it("sends the run, format and type, streams progress, then shows the report", async () => {
    const calls: unknown[][] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const exportGguf = async (...args: unknown[]) => {
      calls.push(args.slice(0, 5));
      const onProgress = args[5] as (p: ExportProgress) => void;
      onProgress({ stage: "writing", done: 3, total: 12, item: "blk.0.attn_q.weight" });
      await gate;
      return report;
    };
    render(GgufExport, { runId: "run-1", which: "best", exportGguf });
    await fireEvent.change(screen.getByTestId("gguf-format"), { target: { value: "ollama" } });
    await fireEvent.change(screen.getByTestId("gguf-quant"), { target: { value: "q8_0" } });
    await fireEvent.click(screen.getByTestId("gguf-start"));
    await settle();
    expect(screen.getByTestId("gguf-progress").textContent).toContain("writing blk.0.attn_q.weight (3/12)");
    release();
    await settle();
    expect(calls).toEqual([["run-1", "best", "ollama", "q8_0", null]]);
    const shown = screen.getByTestId("gguf-result").textContent!;
    expect(shown).toContain("/x/Modelfile");
    expect(shown).toContain("5 F32, 7 Q8_0");
    expect(shown).toContain("3 / 3");
    expect(shown).toContain("ollama create stories260k-run-1");
    expect(screen.getByTestId("gguf-check").textContent).toBe("passed");
  });

  it("exports the base without a run and shows the engine's refusal", async () => {
    const calls: unknown[][] = [];
    const exportGguf = async (...args: unknown[]) => {
      calls.push(args.slice(0, 5));
      throw { code: "ExportCheckFailed", message: "conversation 1: does not stop", details: null };
    };
    render(GgufExport, { runId: null, which: "final", exportGguf });
    expect((screen.getByTestId("gguf-source") as HTMLSelectElement).value).toBe("base");
    await fireEvent.input(screen.getByPlaceholderText("/home/you/models/bolt"), { target: { value: " /tmp/out " } });
    await fireEvent.click(screen.getByTestId("gguf-start"));
    await settle();
    expect(calls).toEqual([[null, "final", "gguf", "f16", "/tmp/out"]]);
    expect(screen.getByTestId("error").textContent).toContain("does not stop");
    expect(screen.queryByTestId("gguf-result")).toBeNull();
  });

  it("stops a running export and says so instead of showing an error", async () => {
    let cancels = 0;
    let fail!: (e: unknown) => void;
    const exportGguf = () => new Promise<ExportReport>((_, reject) => (fail = reject));
    const cancelExport = async () => {
      cancels++;
      fail({ code: "Cancelled", message: "cancelled", details: null });
      return true;
    };
    render(GgufExport, { runId: "run-1", which: "final", exportGguf, cancelExport });
    expect(screen.queryByTestId("gguf-stop")).toBeNull();
    await fireEvent.click(screen.getByTestId("gguf-start"));
    await settle();
    await fireEvent.click(screen.getByTestId("gguf-stop"));
    await settle();
    expect(cancels).toBe(1);
    expect(screen.getByTestId("gguf-stopped").textContent).toContain("Stopped");
    expect(screen.queryByTestId("error")).toBeNull();
    expect(screen.queryByTestId("gguf-stop")).toBeNull();
    expect(screen.queryByTestId("gguf-result")).toBeNull();
  });
});
