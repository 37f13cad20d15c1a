/**
 * How the run history names where a run was trained: its method and learning rate for a run of
 * ours; the trainer and the adapter's own settings for one imported from elsewhere (the engine's
 * `RunOrigin`, whose other settings are only the run's when it came back to a recipe export).
 */
import type { RunRecord } from "./bindings/RunRecord";
import { describeMethod } from "./methods";
import { engineLabel } from "./recipeEngines.svelte";

export function runSettings(x: RunRecord): string {
  const o = x.origin;
  if (o.kind === "imported") {
    const who = o.engine ? engineLabel(o.engine) : "another trainer";
    return `trained elsewhere (${who}): ${o.settings}`;
  }
  return `${describeMethod(x.config.method)}, lr ${x.config.lr}`;
}
