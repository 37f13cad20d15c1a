//! Step 6: streamed replies from the tuned model (base + a run's adapter) and from the base
//! model, on the same messages and sampling settings, with a stop button.

use super::blocking;
use crate::commands::model::load_again;
use crate::error::{ApiError, ApiResult};
use crate::history;
use crate::state::{lock, AppState};
use peft_engine::infer::generate::{generate, GenerateOptions};
use peft_engine::infer::template::Message;
use peft_engine::model::loaded::LoadedModel;
use peft_engine::peft::adapter_io::apply_adapter;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
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

#[derive(Debug, Clone, Deserialize, Serialize, TS)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

/// Sampling settings shared by both sides (temperature 0 = greedy).
#[derive(Debug, Clone, Deserialize, Serialize, TS)]
pub struct Sampling {
    pub temperature: f64,
    pub top_k: u32,
    pub top_p: f64,
    pub repeat_penalty: f64,
    pub max_new_tokens: u32,
    pub seed: u32,
}

impl Sampling {
    fn options(&self) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: self.max_new_tokens as usize,
            temperature: self.temperature,
            top_k: self.top_k as usize,
            top_p: self.top_p,
            repeat_penalty: self.repeat_penalty as f32,
            seed: self.seed as u64,
            ..GenerateOptions::default()
        }
    }
}

/// One reply's end: why it stopped and how fast it went.
#[derive(Debug, Clone, Serialize, TS)]
pub struct ChatReply {
    pub text: String,
    /// `end_of_text`, `max_tokens`, `context_full` or `cancelled`.
    pub stop: String,
    pub tokens: u32,
    pub prompt_tokens: u32,
    pub tokens_per_s: f64,
}

/// The model for `side`: the open base model, or base + the adapter of `run_id` (cached, so
/// only the first reply after training pays for loading it).
async fn model_for(
    state: &AppState,
    side: ChatSide,
    run_id: Option<&str>,
) -> ApiResult<Arc<LoadedModel>> {
    let (_, source, base) = state.current_model()?;
    if side == ChatSide::Base {
        return Ok(base);
    }
    let id = run_id.ok_or_else(|| {
        ApiError::new(
            "NoRun",
            "Train a model first (step 5), or pick a finished run.",
        )
    })?;
    let cached = lock(&state.tuned)?
        .as_ref()
        .filter(|(cached, _)| cached == id)
        .map(|(_, m)| m.clone());
    if let Some(m) = cached {
        return Ok(m);
    }
    let record = history::load(&state.runs_dir(), id)?;
    if record.status != history::RunStatus::Completed {
        return Err(ApiError::new(
            "NoRun",
            format!("run {id} has not finished; its adapter is written when training completes"),
        ));
    }
    let dir = PathBuf::from(&record.dir);
    let m = blocking(move || {
        let mut model = load_again(&source)?;
        apply_adapter(&mut model.decoder, &dir)?;
        Ok(Arc::new(model))
    })
    .await?;
    *lock(&state.tuned)? = Some((id.to_string(), m.clone()));
    Ok(m)
}

/// Generates a reply to `messages` with the chat template, streaming text pieces to
/// `on_text`. `chat_stop` ends every reply in flight.
#[tauri::command]
pub async fn chat_generate(
    state: State<'_, AppState>,
    side: ChatSide,
    run_id: Option<String>,
    messages: Vec<ChatMessage>,
    sampling: Sampling,
    on_text: Channel<String>,
) -> ApiResult<ChatReply> {
    if messages.is_empty() {
        return Err(ApiError::new("InvalidSetting", "Type a message first."));
    }
    let model = model_for(&state, side, run_id.as_deref()).await?;
    let cancel = Arc::new(AtomicBool::new(false));
    lock(&state.chat_cancel)?.push(cancel.clone());
    let flag = cancel.clone();
    let result = blocking(move || {
        let msgs: Vec<Message> = messages
            .iter()
            .map(|m| Message::new(&m.role, &m.content))
            .collect();
        let ids = model.chat_ids(&msgs)?;
        let g = generate(
            &model.decoder,
            &model.tokenizer,
            &ids,
            &sampling.options(),
            &model.stop_ids(),
            Some(&flag),
            &mut |piece| {
                let _ = on_text.send(piece.to_string());
            },
        )?;
        Ok(ChatReply {
            stop: serde_json::to_value(g.stop)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            tokens: g.token_ids.len() as u32,
            prompt_tokens: g.prompt_tokens as u32,
            tokens_per_s: g.tokens_per_s,
            text: g.text,
        })
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
