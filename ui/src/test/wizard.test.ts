import { describe, expect, it } from "vitest";
import { Wizard } from "../lib/wizard.svelte";
import { candidate, fakeApi, plan, run, settings } from "./fixtures";
import type { TrainConfig } from "../lib/bindings/TrainConfig";

describe("Wizard store", () => {
  it("preselects the bundled model and dataset and takes the shell's demo settings", async () => {
    const calls: string[] = [];
    const w = new Wizard(fakeApi({
      modelOpen: async (spec) => { calls.push(`open:${spec}`); return (await fakeApi().modelOpen(spec, () => {})); },
    }));
    await w.start();
    expect(calls).toEqual(["open:demo"]);
    expect(w.model?.info.bundled).toBe(true);
    expect(w.dataset?.path).toBe("/data/bolt-stories.jsonl");
    expect(w.settings?.seq_len).toBe(128);
  });

  it("keeps a model error and stays usable", async () => {
    const w = new Wizard(fakeApi({ modelOpen: async () => { throw { code: "Hub", message: "hub: unreachable", details: null }; } }));
    expect(await w.openModel("org/name")).toBe(false);
    expect(w.modelError?.code).toBe("Hub");
    expect(w.modelLoading).toBe(false);
  });

  it("shows download progress while a model opens", async () => {
    const seen: (number | undefined)[] = [];
    let w!: Wizard;
    w = new Wizard(fakeApi({
      modelOpen: async (_s, on) => {
        on({ kind: "start", file: "model.safetensors", total_bytes: 100 });
        on({ kind: "progress", file: "model.safetensors", bytes_done: 50, total_bytes: 100 });
        seen.push(w.download?.done);
        return fakeApi().modelOpen("demo", () => {});
      },
    }));
    await w.openModel("org/name");
    expect(seen).toEqual([50]);
    expect(w.download).toBeNull();
  });

  it("switching method keeps the LoRA settings and a candidate brings the engine's settings", async () => {
    const w = new Wizard(fakeApi());
    w.useSettings(settings);
    w.setMethod("full");
    expect(w.settings?.method).toEqual({ kind: "full" });
    w.setMethod("qlora");
    expect(w.settings?.method).toMatchObject({ kind: "qlora", rank: 16, alpha: 32 });
    w.setMethod("selective");
    expect(w.settings?.method).toEqual({ kind: "selective", what: "norm" });
    await w.recommend();
    w.choose(0);
    expect(w.settings?.method).toMatchObject({ kind: "lora", rank: 8 });
    expect(w.settings).not.toBe(plan.configs[0]);
  });

  it("sends the settings it shows, and takes each record from the engine as it is", async () => {
    const sent: TrainConfig[] = [];
    const w = new Wizard(fakeApi({ trainStart: async (c) => { sent.push(c); return run("running"); } }));
    w.useSettings(settings);
    w.setMethod("qlora");
    await w.startTraining();
    expect(sent[0].method.kind).toBe("qlora");
    expect(w.training).toBe(true);
    const r = run("running");
    w.onTrain({ kind: "event", event: { kind: "step", step: 1, total_steps: 10, epoch: 0.1, loss: 3, eval_loss: null, lr: 1e-3, grad_norm: 1, tokens_per_s: 100, eta_s: 9, rss_bytes: 1, rss_growth_bytes: 1, elapsed_s: 1 }, record: r });
    expect(w.run).toEqual(r);
    expect(w.last?.loss).toBe(3);
    w.onTrain({ kind: "finished", record: run("completed") });
    expect(w.training).toBe(false);
    expect(w.chatRunId).toBe("run-1-1");
  });

  it("asks for the chosen adapter when chatting and exporting", async () => {
    const whichChat: string[] = [];
    const whichExport: string[] = [];
    const w = new Wizard(fakeApi({
      chatGenerate: async (side, _r, which, _m, _s, on) => { whichChat.push(`${side}:${which}`); on("x"); return fakeApi().chatGenerate(side, null, which, [], _s, () => {}); },
      exportRun: async (id, which, kind, dest) => { whichExport.push(which); return fakeApi().exportRun(id, which, kind, dest); },
    }));
    w.chatRunId = "run-1-1";
    w.chatWhich = "best";
    await w.send("Tell me a story.");
    expect(whichChat.sort()).toEqual(["base:best", "tuned:best"]);
    w.exportWhich = "best";
    await w.exportRun("merged", "run-1-1");
    expect(whichExport).toEqual(["best"]);
    expect(candidate().fits).toBe(true);
  });
});
