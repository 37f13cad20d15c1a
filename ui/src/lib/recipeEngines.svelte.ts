/**
 * The trainers a recipe can be written for, as the engine lists them (`recipe_engines`):
 * loaded once and shared by the recipe export (its choice list) and the run history (the name
 * of the trainer an imported adapter came from). Nothing about the trainers is decided here.
 */
import type { Api } from "./api";
import type { RecipeEngineChoice } from "./bindings/RecipeEngineChoice";

export const recipeEngines = $state<{ list: RecipeEngineChoice[] }>({ list: [] });

/** Loads the list once (a failure leaves it empty: the export button then stays disabled). */
export async function loadRecipeEngines(api: Api): Promise<void> {
  if (recipeEngines.list.length) return;
  try {
    recipeEngines.list = await api.recipeEngines();
  } catch {
    /* shown as no trainer to choose */
  }
}

/** The engine's name for the trainer `id`, or `id` itself before the list is loaded. */
export function engineLabel(id: string): string {
  return recipeEngines.list.find((c) => c.engine === id)?.label ?? id;
}
