// The wizard under abuse: leaving the Train step while a run goes on (its view is unmounted,
// the run and its updates are not), a run a dead app left interrupted, and a start the shell
// refuses because a run already goes on (another window's).
import { afterEach, describe, expect, it } from "vitest";
import { cleanup, fireEvent, render, screen } from "@testing-library/svelte";
import { flushSync } from "svelte";
import { Wizard } from "../lib/wizard.svelte";
import TrainStep from "../steps/TrainStep.svelte";
import { dataset, fakeApi, model, run, settings } from "./fixtures";
import type { RunRecord } from "../lib/bindings/RunRecord";
import type { TrainUpdate } from "../lib/bindings/TrainUpdate";

afterEach(() => cleanup());

function showTrain(w: Wizard) {
  return render(TrainStep, { context: new Map([["wizard", w]]) });
}

function at(step: number, status: RunRecord["status"] = "running"): RunRecord {
  const r = run(status);
  r.step = step;
  r.losses = Array.from({ length: step }, (_, i) => [i + 1, 3 - i * 0.1] as [number, number]);
  return r;
}

function stepUpdate(step: number): TrainUpdate {
  return {
    kind: "event",
    event: { kind: "step", step, total_steps: 10, epoch: step / 10, loss: 3 - step * 0.1, eval_loss: null, lr: 1e-3, grad_norm: 1, tokens_per_s: 100, eta_s: 10 - step, rss_bytes: 1, rss_growth_bytes: 1, elapsed_s: step },
    record: at(step),
  };
}

function ready(w: Wizard) {
  w.useSettings(settings);
  w.model = model;
  w.dataset = dataset;
}

const text = (id: string) => screen.getByTestId(id).textContent;
const button = (id: string) => screen.getByTestId(id) as HTMLButtonElement;

describe("the wizard under abuse", () => {
  it("keeps the run and every update while the Train step is left and opened again", async () => {
    let send: ((u: TrainUpdate) => void) | null = null;
    const starts: (string | null)[] = [];
    const w = new Wizard(fakeApi({
      trainStart: async (_c, resume, on) => { starts.push(resume); send = on; return at(0); },
      runsList: async () => [at(0)],
    }));
    ready(w);
    w.go(4);
    showTrain(w);
    await fireEvent.click(button("start-training"));
    send!(stepUpdate(3));
    flushSync();
    expect(text("train-step")).toBe("3 / 10");

    // To the Chat step and back: the view goes away, updates keep arriving.
    cleanup();
    w.go(5);
    for (const s of [4, 5, 6, 7]) send!(stepUpdate(s));
    w.go(4);
    showTrain(w);
    flushSync();
    expect(text("train-step")).toBe("7 / 10");
    expect(text("run-status")).toBe("running");
    expect(w.run?.losses.length).toBe(7);
    expect(button("pause-training").disabled).toBe(false);
    expect(button("start-training").disabled).toBe(true);
    expect(button("resume-training").disabled).toBe(true);
    // Coming back neither starts nor resumes anything.
    expect(starts).toEqual([null]);

    // It finishes while another step is shown; the Train step then shows the end.
    cleanup();
    w.go(6);
    send!({ kind: "finished", record: at(10, "completed") });
    w.go(4);
    showTrain(w);
    flushSync();
    expect(text("run-status")).toBe("completed");
    expect(text("train-step")).toBe("10 / 10");
    expect(w.training).toBe(false);
    expect(w.chatRunId).toBe("run-1-1");
    expect(button("start-training").disabled).toBe(false);
  });

  it("offers a run a dead app left interrupted for resuming, and resumes that run", async () => {
    const starts: (string | null)[] = [];
    const w = new Wizard(fakeApi({
      trainStart: async (_c, resume) => { starts.push(resume); return at(4); },
      runsList: async () => [at(4, "interrupted")],
    }));
    ready(w);
    showTrain(w);
    await w.loadRuns();
    flushSync();
    const history = screen.getByTestId("run-history");
    expect(history.textContent).toContain("interrupted");
    const resume = Array.from(history.querySelectorAll("button")).find((b) => b.textContent === "Resume")!;
    await fireEvent.click(resume);
    expect(starts).toEqual(["run-1-1"]);
    expect(w.training).toBe(true);
  });

  it("shows the shell's refusal when a run already goes on elsewhere, and changes nothing", async () => {
    const w = new Wizard(fakeApi({
      trainStart: async () => { throw { code: "Busy", message: "Training is already running; wait for it or stop it first.", details: null }; },
    }));
    ready(w);
    showTrain(w);
    await fireEvent.click(button("start-training"));
    flushSync();
    expect(text("error")).toContain("Busy");
    expect(text("error")).toContain("already running");
    expect(w.training).toBe(false);
    expect(w.run).toBeNull();
    expect(button("start-training").disabled).toBe(false);
  });

  it("follows a run again after the window is reloaded mid-run, with the run's model, data and settings", async () => {
    // A fresh wizard (the reload) over a shell whose run goes on at step 5.
    let send: ((u: TrainUpdate) => void) | null = null;
    const opened: string[] = [];
    const inspected: string[] = [];
    const rec = at(5);
    rec.model = "/models/mine";
    rec.data = "/data/mine.jsonl";
    rec.config = { ...structuredClone(settings), epochs: 7 };
    const w = new Wizard(fakeApi({
      trainAttach: async (on) => { send = on; return rec; },
      modelOpen: async (spec) => { opened.push(spec); return model; },
      dataInspect: async (path) => { inspected.push(path); return dataset; },
      runsList: async () => [rec],
    }));
    await w.start();
    expect(opened).toEqual(["/models/mine"]);
    expect(inspected).toEqual(["/data/mine.jsonl"]);
    expect(w.settings?.epochs).toBe(7);
    expect(w.step).toBe(4);
    showTrain(w);
    flushSync();
    expect(text("train-step")).toBe("5 / 10");
    expect(button("pause-training").disabled).toBe(false);
    expect(button("start-training").disabled).toBe(true);
    // Progress now reaches the new view.
    send!(stepUpdate(8));
    flushSync();
    expect(text("train-step")).toBe("8 / 10");
  });

  it("starts as usual when nothing trains", async () => {
    const opened: string[] = [];
    const w = new Wizard(fakeApi({ modelOpen: async (spec) => { opened.push(spec); return model; } }));
    await w.start();
    expect(opened).toEqual(["demo"]);
    expect(w.training).toBe(false);
    expect(w.step).toBe(0);
  });
});
