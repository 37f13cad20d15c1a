import { describe, expect, it } from "vitest";
import { Wizard } from "../lib/wizard.svelte";
import { fakeApi, run } from "./fixtures";

describe("Wizard store", () => {
  it("preselects the bundled model and dataset on start", async () => {
    const calls: string[] = [];
    const w = new Wizard(fakeApi({
      modelOpen: async (spec) => { calls.push(`open:${spec}`); return (await fakeApi().modelOpen(spec, () => {})); },
    }));
    await w.start();
    expect(calls).toEqual(["open:demo"]);
    expect(w.model?.bundled).toBe(true);
    expect(w.dataset?.file_name).toBe("bolt-stories.jsonl");
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

  it("accumulates train events into the run and finishes", async () => {
    const w = new Wizard(fakeApi());
    await w.startTraining();
    expect(w.training).toBe(true);
    w.onTrain({ kind: "started", run_id: "run-1-1", total_steps: 10, start_step: 0, train_examples: 50, val_examples: 6, trainable_params: 1, total_params: 2 });
    w.onTrain({ kind: "step", step: 1, total_steps: 10, epoch: 0.1, loss: 3, eval_loss: null, lr: 1e-3, grad_norm: 1, tokens_per_s: 100, eta_s: 9, rss_bytes: 1, elapsed_s: 1 });
    w.onTrain({ kind: "eval", step: 1, loss: 3.1 });
    expect(w.run?.losses).toEqual([[1, 3]]);
    expect(w.run?.eval_losses).toEqual([[1, 3.1]]);
    w.onTrain({ kind: "finished", record: run("completed") });
    expect(w.training).toBe(false);
    expect(w.chatRunId).toBe("run-1-1");
  });

  it("streams both sides of a chat turn", async () => {
    const w = new Wizard(fakeApi());
    w.chatRunId = "run-1-1";
    await w.send("Tell me a story.");
    expect(w.turns[0].tuned).toBe("Bolt loves apples.");
    expect(w.turns[0].base).toBe("Bolt loves apples.");
    expect(w.streaming).toBe(false);
  });
});
