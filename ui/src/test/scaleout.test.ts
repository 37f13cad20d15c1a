import { afterEach, describe, expect, it } from "vitest";
import { cleanup, fireEvent, render, screen, waitFor } from "@testing-library/svelte";
import { Wizard } from "../lib/wizard.svelte";
import TrainStep from "../steps/TrainStep.svelte";
import ExportStep from "../steps/ExportStep.svelte";
import PlanStep from "../steps/PlanStep.svelte";
import { STEPS } from "../lib/wizard.svelte";
import type { RecipeReport } from "../lib/bindings/RecipeReport";
import type { RunRecord } from "../lib/bindings/RunRecord";
import { dataset, fakeApi, model, plan, run, settings } from "./fixtures";

afterEach(() => cleanup());

function withWizard(C: any, w: Wizard) {
  return render(C, { context: new Map([["wizard", w]]) });
}

const imported: RunRecord = {
  ...run("completed"), id: "run-9-1", best: null, storage: null, memory: null,
  origin: {
    kind: "imported", engine: "trl", evidence: "/srv/out/README.md", source: "/srv/out", base_model: "org/base",
    settings: "LoRA r=2 alpha=4 dropout=0 on q_proj", from_recipe: false,
  },
};

const report: RecipeReport = {
  engine: "trl", out_dir: "/home/u/to-server", files: ["trl.yaml", "README.md"], config_file: "trl.yaml",
  base_model: "./model", mapped: [{ ours: "lr", theirs: "learning_rate", value: "0.003" }],
  not_carried: [{ field: "precision", detail: "the export trains in bf16" }],
  data: { source_format: "Chat", rows: "chat", train_examples: 50, eval_examples: 6, dropped_untrained: 0, truncated: 0, skipped_rows: 0 },
  total_steps: 100, install: ["pip install trl"], run: "trl sft --config trl.yaml", run_multi_gpu: "accelerate launch …",
};

describe("continue on a GPU server and back", () => {
  it("Train's history imports an adapter folder and shows it as trained elsewhere", async () => {
    const seen: string[] = [];
    let runs: RunRecord[] = [];
    const w = new Wizard(fakeApi({
      pickPath: async (what) => (seen.push(what), "/srv/out"),
      adapterImport: async (dir) => (seen.push(dir), (runs = [imported]), imported),
      runsList: async () => runs,
    }));
    w.model = model;
    withWizard(TrainStep, w);
    await fireEvent.click(screen.getByTestId("import-adapter"));
    await waitFor(() => expect(screen.getByTestId("import-done").textContent).toContain("run-9-1"));
    expect(seen).toEqual(["adapter_folder", "/srv/out"]);
    await waitFor(() => expect(screen.getByTestId("run-history").textContent).toContain("trained elsewhere (TRL): LoRA r=2"));
  });

  it("Export writes the recipe for the current settings and lists what differs", async () => {
    const sent: unknown[] = [];
    const w = new Wizard(fakeApi({ recipeExport: async (...a) => (sent.push(a), report) }));
    w.model = model;
    w.dataset = dataset;
    w.useSettings(settings);
    withWizard(ExportStep, w);
    // The choices are the engine's list, in its order and with its names.
    await waitFor(() => expect(screen.getByTestId("recipe-engine").textContent).toContain("LLaMA-Factory (llamafactory.yaml)"));
    const options = [...(screen.getByTestId("recipe-engine") as HTMLSelectElement).options].map((o) => o.value);
    expect(options).toEqual(["axolotl", "llamafactory", "trl"]);
    await fireEvent.change(screen.getByTestId("recipe-engine"), { target: { value: "trl" } });
    await fireEvent.click(screen.getByTestId("recipe-export"));
    await waitFor(() => expect(screen.getByTestId("recipe-result").textContent).toContain("/home/u/to-server"));
    expect(sent).toEqual([["trl", settings, null]]);
    expect(screen.getByTestId("recipe-gaps").textContent).toContain("bf16");
    expect(screen.getByTestId("recipe-result").textContent).toContain("trl sft --config trl.yaml");
  });

  it("Plan names the GPU class a run too big here would fit and leads to the export", async () => {
    const w = new Wizard(fakeApi());
    w.dataset = dataset;
    w.useSettings(settings);
    w.plan = {
      ...plan,
      recommendation: {
        ...plan.recommendation,
        elsewhere: {
          label: "LoRA", seq_len: 2048, gpu_bytes: 18 * 2 ** 30, gpu: "L4 24 GB", gpu_usable_bytes: 22 * 2 ** 30,
          typical: "cloud inference instances", needs_fp16: false, sentence: "LoRA at 2048 tokens would fit one L4 24 GB GPU.",
        },
      },
    };
    withWizard(PlanStep, w);
    const hint = screen.getByTestId("plan-elsewhere").textContent ?? "";
    expect(hint).toContain("Fits one L4 24 GB GPU");
    expect(hint).toContain("18.0 GiB");
    await fireEvent.click(screen.getByTestId("plan-continue-elsewhere"));
    expect(STEPS[w.step]).toBe("Export");
  });

  it("Plan shows no GPU hint when the run fits here", () => {
    const w = new Wizard(fakeApi());
    w.dataset = dataset;
    w.plan = plan;
    w.useSettings(settings);
    withWizard(PlanStep, w);
    expect(screen.queryByTestId("plan-elsewhere")).toBeNull();
  });

  it("Export's recipe waits for a dataset", () => {
    const w = new Wizard(fakeApi());
    w.model = model;
    w.useSettings(settings);
    withWizard(ExportStep, w);
    expect((screen.getByTestId("recipe-export") as HTMLButtonElement).disabled).toBe(true);
  });
});
