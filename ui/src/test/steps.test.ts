import { afterEach, describe, expect, it } from "vitest";
import { cleanup, render, screen } from "@testing-library/svelte";
import { flushSync } from "svelte";
import { Wizard } from "../lib/wizard.svelte";
import HardwareStep from "../steps/HardwareStep.svelte";
import DataStep from "../steps/DataStep.svelte";
import PlanStep from "../steps/PlanStep.svelte";
import TrainStep from "../steps/TrainStep.svelte";
import ChatStep from "../steps/ChatStep.svelte";
import ExportStep from "../steps/ExportStep.svelte";
import ModelStep from "../steps/ModelStep.svelte";
import { candidate, dataset, fakeApi, hardware, model, plan, run, settings } from "./fixtures";

afterEach(() => cleanup());

function withWizard(C: any, w: Wizard) {
  return render(C, { context: new Map([["wizard", w]]) });
}

describe("step components", () => {
  it("Hardware says clearly when there is no GPU", () => {
    const w = new Wizard(fakeApi());
    w.hardware = hardware;
    withWizard(HardwareStep, w);
    expect(screen.getByTestId("no-gpu").textContent).toContain("Training runs on the CPU");
    expect(screen.getByTestId("hardware-summary").textContent).toContain("LoRA fits");
    // The engine's words for a missing driver, not a library loader's error.
    expect(document.body.textContent).toContain("No NVIDIA driver found");
  });

  it("Model shows the facts and the template", () => {
    const w = new Wizard(fakeApi());
    w.model = model;
    withWizard(ModelStep, w);
    expect(screen.getByTestId("model-info").textContent).toContain("llama");
    expect(screen.getByTestId("model-info").textContent).toContain("fallback");
  });

  it("Data highlights the trained tokens", () => {
    const w = new Wizard(fakeApi());
    w.model = model;
    w.dataset = dataset;
    withWizard(DataStep, w);
    const marks = screen.getByTestId("example").querySelectorAll("mark");
    expect(marks.length).toBe(1);
    expect(marks[0].textContent).toBe("Bolt was a little robot.");
    expect(screen.getByTestId("data-stats").textContent).toContain("56");
  });

  it("Plan warns when the edited plan does not fit, and offers every method", () => {
    const w = new Wizard(fakeApi());
    w.dataset = dataset;
    w.plan = plan;
    w.useSettings(settings);
    w.estimate = candidate(false);
    withWizard(PlanStep, w);
    expect(screen.getByTestId("no-fit").textContent).toContain("no longer fits");
    expect(screen.getByTestId("plan-summary").textContent).toContain("LoRA");
    const options = [...(screen.getByTestId("method") as HTMLSelectElement).options].map((o) => o.value);
    expect(options).toEqual(["lora", "qlora", "selective", "full"]);
  });

  it("Plan offers bf16 compute for LoRA and QLoRA only, and estimates it", async () => {
    const asked: (boolean | undefined)[] = [];
    const w = new Wizard(fakeApi({ planEstimate: async (cfg) => { asked.push(cfg.bf16_compute); return candidate(true); } }));
    w.dataset = dataset;
    w.plan = plan;
    w.useSettings(settings);
    w.hardware = hardware;
    withWizard(PlanStep, w);
    const box = screen.getByTestId("bf16-compute") as HTMLInputElement;
    // The fixture's CPU has no AMX: the option says it is emulated.
    expect(box.closest("label")?.textContent).toContain("emulated");
    box.click();
    await new Promise((r) => setTimeout(r, 200));
    expect(w.settings?.bf16_compute).toBe(true);
    expect(asked).toEqual([true]);
    w.setMethod("full");
    flushSync();
    expect(screen.queryByTestId("bf16-compute")).toBeNull();
    expect(w.settings?.bf16_compute).toBe(false);
  });

  it("Plan names the CPU's bf16 unit beside the option", () => {
    for (const [extra, unit] of [[{ amx_bf16: true }, "(AMX)"], [{ avx512f: true, avx512_bf16: true }, "(AVX512-BF16)"]] as const) {
      cleanup();
      const w = new Wizard(fakeApi());
      w.dataset = dataset;
      w.plan = plan;
      w.useSettings(settings);
      const cpu = { ...hardware.hardware.cpu, features: { ...hardware.hardware.cpu.features, ...extra } };
      w.hardware = { ...hardware, hardware: { ...hardware.hardware, cpu } };
      withWizard(PlanStep, w);
      expect(screen.getByTestId("bf16-compute").closest("label")?.textContent).toContain(unit);
    }
  });

  it("Plan offers the devices and plans again for the one chosen", async () => {
    const asked: (string | undefined)[] = [];
    const w = new Wizard(fakeApi({ planRecommend: async (base) => { asked.push(base.device); return plan; } }));
    w.dataset = dataset;
    w.plan = plan;
    w.useSettings(settings);
    withWizard(PlanStep, w);
    const sel = screen.getByTestId("plan-device") as HTMLSelectElement;
    expect([...sel.options].map((o) => o.value)).toEqual(["auto", "cpu", "cuda:0"]);
    // A GPU this build cannot use is shown, not offered.
    expect(sel.options[2].disabled).toBe(true);
    sel.value = "cpu";
    sel.dispatchEvent(new Event("change", { bubbles: true }));
    await new Promise((r) => setTimeout(r, 0));
    expect(w.settings?.device).toBe("cpu");
    expect(asked).toEqual(["cpu"]);
    sel.value = "auto";
    sel.dispatchEvent(new Event("change", { bubbles: true }));
    await new Promise((r) => setTimeout(r, 0));
    expect(w.settings?.device).toBeUndefined();
  });

  it("Train names the device a run computes on", () => {
    const w = new Wizard(fakeApi());
    const x = run("running");
    x.storage = { ...x.storage!, device: "cpu", compute_dtype: "f32" };
    w.run = x;
    withWizard(TrainStep, w);
    expect(screen.getByTestId("run-device").textContent).toBe("CPU");
    expect(screen.getByTestId("run-storage").textContent).toContain("computing in f32");
  });

  it("Train says a QLoRA run over a GGUF keeps the file's block types", () => {
    const w = new Wizard(fakeApi());
    const x = run("running");
    x.storage = { ...x.storage!, dense_linears: 0, gguf_linears: 210, adapted_linears: 210 };
    w.run = x;
    withWizard(TrainStep, w);
    const text = screen.getByTestId("run-storage").textContent;
    expect(text).toContain("210 linear layers in the GGUF's own block types");
    expect(text).not.toContain("NF4");
  });

  it("Train shows progress and the history", () => {
    const w = new Wizard(fakeApi());
    w.run = run("paused");
    w.runs = [run("paused")];
    withWizard(TrainStep, w);
    expect(screen.getByTestId("train-step").textContent).toBe("10 / 10");
    expect(screen.getByTestId("run-status").textContent).toBe("paused");
    expect((screen.getByTestId("resume-training") as HTMLButtonElement).disabled).toBe(false);
    // Like with like: the run's own growth against the plan less what was already loaded.
    expect(screen.getByTestId("run-memory").textContent).toContain("planned 40.0 MiB");
    expect(screen.getByTestId("run-best").textContent).toContain("step 5");
    expect(screen.getByTestId("run-storage").textContent).toContain("35 with LoRA adapters");
  });

  it("Chat renders both sides of a streamed turn", async () => {
    const w = new Wizard(fakeApi());
    w.model = model;
    w.chatRunId = "run-1-1";
    w.runs = [run("completed")];
    withWizard(ChatStep, w);
    await w.send("Tell me a story.");
    flushSync();
    expect(screen.getByTestId("chat-tuned").textContent).toContain("Bolt loves apples.");
    expect(screen.getByTestId("chat-base").textContent).toContain("Bolt loves apples.");
  });

  it("Export lists the written files", async () => {
    const w = new Wizard(fakeApi({ runsList: async () => [run("completed")] }));
    w.runs = [run("completed")];
    withWizard(ExportStep, w);
    await w.exportRun("adapter", "run-1-1");
    flushSync();
    expect(screen.getByTestId("export-result").textContent).toContain("adapter_config.json");
  });
});
