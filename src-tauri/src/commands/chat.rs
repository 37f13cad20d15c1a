//! Step 6: streamed replies from the tuned model (the open model + a run's adapter, final or
//! best) and from the base model, on the same messages and sampling settings, with a stop
//! button.

use super::blocking;
use crate::error::{ApiError, ApiResult};
use crate::state::{lock, AppState, TunedSlot};
use peft_engine::infer::generate::{generate, GenerateOptions, Generation};
use peft_engine::model::decoder::Decoder;
use peft_engine::template::Message;
use peft_engine::train::history;
use peft_engine::train::tuned::with_adapter;
use peft_engine::train::WhichAdapter;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tauri::ipc::Channel;
use tauri::State;
use ts_rs::TS;

/// Which model answers.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, TS, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ChatSide {
    Tuned,
    Base,
}

/// The weights for `side`: the open model's chat weights, or base + the adapter `which` of run
/// `run_id` (cached, so only the first reply after training pays for attaching it).
async fn weights_for(
    state: &AppState,
    side: ChatSide,
    run_id: Option<&str>,
    which: WhichAdapter,
) -> ApiResult<Arc<Decoder>> {
    let (_, model) = state.current_model()?;
    if side == ChatSide::Base {
        return blocking(move || Ok(model.chat_weights()?)).await;
    }
    let id = run_id.ok_or_else(|| {
        ApiError::new(
            "NoRun",
            "Train a model first (step 5), or pick a finished run.",
        )
    })?;
    let cached = lock(&state.tuned)?
        .as_ref()
        .filter(|t| t.run_id == id && t.which == which)
        .map(|t| t.decoder.clone());
    if let Some(d) = cached {
        return Ok(d);
    }
    let record = history::find(&state.runs_dir(), id)?;
    let dir = record
        .adapter_dir(which)
        .map_err(|e| ApiError::new("NoRun", e.to_string()))?;
    let d = blocking(move || Ok(Arc::new(with_adapter(&model, &dir)?))).await?;
    *lock(&state.tuned)? = Some(TunedSlot {
        run_id: id.to_string(),
        which,
        decoder: d.clone(),
    });
    Ok(d)
}

/// Generates a reply to `messages` with the chat template, streaming text pieces to
/// `on_text`. `chat_stop` ends every reply in flight.
#[tauri::command]
pub async fn chat_generate(
    state: State<'_, AppState>,
    side: ChatSide,
    run_id: Option<String>,
    which: WhichAdapter,
    messages: Vec<Message>,
    sampling: GenerateOptions,
    on_text: Channel<String>,
) -> ApiResult<Generation> {
    if messages.is_empty() {
        return Err(ApiError::new("InvalidSetting", "Type a message first."));
    }
    let weights = weights_for(&state, side, run_id.as_deref(), which).await?;
    let (_, model) = state.current_model()?;
    let cancel = Arc::new(AtomicBool::new(false));
    lock(&state.chat_cancel)?.push(cancel.clone());
    let flag = cancel.clone();
    let result = blocking(move || {
        let ids = model.chat_ids(&messages)?;
        Ok(generate(
            &weights,
            &model.tokenizer,
            &ids,
            &sampling,
            &model.stop_ids(),
            Some(&flag),
            &mut |piece| {
                let _ = on_text.send(piece.to_string());
            },
        )?)
    })
    .await;
    lock(&state.chat_cancel)?.retain(|c| !Arc::ptr_eq(c, &cancel));
    result
}

/// Stops every reply being generated.
#[tauri::command]
pub fn chat_stop(state: State<'_, AppState>) -> ApiResult<u32> {
    let flags = lock(&state.chat_cancel)?;
    for f in flags.iter() {
        f.store(true, Ordering::Relaxed);
    }
    Ok(flags.len() as u32)
}
