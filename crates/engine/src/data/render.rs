//! Example → token ids plus a loss mask: what the model sees and which positions it learns.
//!
//! Chat examples are rendered with the model's [`ChatTemplate`]; by default only assistant
//! turns are trained. The assistant spans are found by rendering prefixes, the technique TRL
//! and axolotl use for templates without `{% generation %}` markers: for assistant message `i`,
//! `render(messages[..i], add_generation_prompt = true)` ends exactly where the reply starts,
//! and `render(messages[..=i], false)` ends after the turn's closing text. Both must be prefixes
//! of the full rendering (true of ChatML, Llama 3, Mistral and the fallback; a template that
//! rewrites earlier turns is rejected with [`Error::Template`]). Within the turn the trained span
//! runs from the reply's text (searched for in the turn, so a role header left there by a
//! template that ignores `add_generation_prompt` is not trained) to the end of the end-of-turn
//! marker (so the newline after `<|im_end|>` is not trained). The full text is then tokenised
//! once, and a token is trained when its bytes overlap a span — so a reply's first token that
//! also carries the preceding space (GPT-2's `Ġyes`) is learned. Tokenising pieces separately
//! instead would change the ids (SentencePiece prepends `▁` to every piece; BPE merges across
//! piece boundaries).
//!
//! End of turn: the model must learn to stop, so when the template does not write the
//! end-of-turn marker after a reply, its id is inserted (trained) after the span. Completion and
//! text examples get EOS appended the same way. BOS: the text is encoded with
//! `add_special = false` (a rendered template already holds its specials), and the ids the
//! tokenizer's post-processor would have put first (Llama 2's `<s>`) are prepended, untrained,
//! unless the text already starts with them.
//!
//! This module does not read files (`formats`) or pad batches (`batch`).

use crate::data::formats::Example;
use crate::error::{Error, Result};
use crate::template::{ChatTemplate, Message};
use crate::tokenizer::Tokenizer;
use serde::Serialize;

/// Which tokens carry loss in chat examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum TrainOn {
    /// Assistant replies and their end-of-turn token (default: the model learns to answer,
    /// not to imitate users; the usual choice for instruction tuning).
    #[default]
    Assistant,
    /// Every token of the rendered conversation (more signal on small data, but the model also
    /// learns to write user turns).
    All,
}

/// Rendering settings.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// Longest sequence kept, in tokens; longer examples are cut at the end. Memory for
    /// activations grows linearly with it (quadratically for attention scores).
    pub max_len: usize,
    pub train_on: TrainOn,
}

impl Default for RenderOptions {
    /// 512 tokens, assistant-only loss.
    fn default() -> Self {
        Self {
            max_len: 512,
            train_on: TrainOn::Assistant,
        }
    }
}

/// One tokenised example; `loss_mask[t] == 1` when token `t` is learned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct TokenizedExample {
    pub input_ids: Vec<u32>,
    pub loss_mask: Vec<u8>,
    /// Length before truncation to `max_len`.
    pub full_len: usize,
}

impl TokenizedExample {
    pub fn truncated(&self) -> bool {
        self.full_len > self.input_ids.len()
    }

    pub fn trained_tokens(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m != 0).count()
    }
}

/// A piece of rendered text for display, marked trained or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Segment {
    pub text: String,
    pub trained: bool,
}

/// Renders and tokenises examples for one tokenizer/template pair.
pub struct Renderer<'a> {
    tokenizer: &'a Tokenizer,
    template: &'a ChatTemplate,
    opts: RenderOptions,
    /// Ids the post-processor puts in front of plain text (Llama 2: `[bos]`; GPT-2 BPE: none).
    bos_prefix: Vec<u32>,
    eot: Option<(String, u32)>,
    eos: Option<(String, u32)>,
}

impl<'a> Renderer<'a> {
    /// # Errors
    /// [`Error::Invalid`] for `max_len == 0`; [`Error::Tokenizer`] if probing the tokenizer fails.
    pub fn new(
        tokenizer: &'a Tokenizer,
        template: &'a ChatTemplate,
        opts: RenderOptions,
    ) -> Result<Self> {
        if opts.max_len == 0 {
            return Err(Error::invalid("max_len", "must be at least 1"));
        }
        let (with, without) = (tokenizer.encode("a", true)?, tokenizer.encode("a", false)?);
        let bos_prefix = match with.iter().position(|id| without.first() == Some(id)) {
            Some(n) if with[n..].starts_with(&without) => with[..n].to_vec(),
            _ => Vec::new(),
        };
        // A marker only counts when it is one token: then stopping and training use its id.
        let single = |s: &str| -> Option<(String, u32)> {
            match tokenizer.encode(s, false).ok()?.as_slice() {
                [id] => Some((s.to_string(), *id)),
                _ => None,
            }
        };
        let eos_text = |id: u32| tokenizer.id_to_token(id).map(|t| (t, id));
        let eos = tokenizer
            .eos_ids
            .first()
            .and_then(|&id| eos_text(id))
            .or_else(|| single(&template.eos_token));
        let eot = template
            .end_of_turn()
            .and_then(|s| single(&s))
            .or_else(|| eos.clone());
        Ok(Self {
            tokenizer,
            template,
            opts,
            bos_prefix,
            eot,
            eos,
        })
    }

    /// Renders and tokenises one example.
    ///
    /// # Errors
    /// [`Error::Template`] if the template fails or is not prefix-stable;
    /// [`Error::Tokenizer`] if encoding fails.
    pub fn tokenize(&self, ex: &Example) -> Result<TokenizedExample> {
        Ok(self.build(ex)?.0)
    }

    /// [`Self::tokenize`] plus the rendered text split into trained/untrained segments.
    ///
    /// # Errors
    /// As [`Self::tokenize`].
    pub fn build(&self, ex: &Example) -> Result<(TokenizedExample, Vec<Segment>)> {
        let (text, spans, closer) = match ex {
            Example::Chat(msgs) => {
                let (text, spans) = self.chat_spans(msgs)?;
                (text, spans, self.eot.clone())
            }
            Example::Completion { prompt, completion } => {
                let text = format!("{prompt}{completion}");
                let span = (prompt.len(), text.len(), false);
                (text, vec![span], self.eos.clone())
            }
            Example::Text(t) => (t.clone(), vec![(0, t.len(), false)], self.eos.clone()),
        };
        let enc = self
            .tokenizer
            .inner
            .encode(text.as_str(), false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let (ids, offsets) = (enc.get_ids(), enc.get_offsets());
        let mut input_ids = Vec::with_capacity(ids.len() + spans.len() + self.bos_prefix.len());
        let mut loss_mask = Vec::with_capacity(input_ids.capacity());
        if !ids.starts_with(&self.bos_prefix) {
            input_ids.extend_from_slice(&self.bos_prefix);
            loss_mask.resize(self.bos_prefix.len(), 0);
        }
        let mut segments = Vec::new();
        let (mut tok, mut pos) = (0, 0);
        for &(start, end, closed) in &spans {
            // Spans come sorted from a prefix-stable template; never slice backwards if not.
            let (start, end) = (start.max(pos), end.max(start.max(pos)));
            // Untrained tokens before the span, then the span's own tokens.
            while tok < ids.len() && offsets[tok].1 <= start {
                input_ids.push(ids[tok]);
                loss_mask.push(0);
                tok += 1;
            }
            while tok < ids.len() && offsets[tok].0 < end {
                input_ids.push(ids[tok]);
                loss_mask.push(1);
                tok += 1;
            }
            push_segment(&mut segments, &text[pos..start], false);
            push_segment(&mut segments, &text[start..end], true);
            pos = end;
            if let (false, Some((marker, id))) = (closed, &closer) {
                if input_ids.last() != Some(id) || loss_mask.last() != Some(&1) {
                    input_ids.push(*id);
                    loss_mask.push(1);
                    push_segment(&mut segments, marker, true);
                }
            }
        }
        input_ids.extend_from_slice(&ids[tok..]);
        loss_mask.resize(input_ids.len(), 0);
        push_segment(&mut segments, &text[pos..], false);
        let full_len = input_ids.len();
        input_ids.truncate(self.opts.max_len);
        loss_mask.truncate(self.opts.max_len);
        let ex = TokenizedExample {
            input_ids,
            loss_mask,
            full_len,
        };
        Ok((ex, segments))
    }

    /// The full rendering and its trained byte spans.
    fn chat_spans(&self, msgs: &[Message]) -> Result<(String, Vec<Span>)> {
        let full = self.template.render(msgs, false)?;
        if self.opts.train_on == TrainOn::All {
            let closed = self
                .eot
                .as_ref()
                .is_some_and(|(m, _)| full.trim_end().ends_with(m));
            return Ok((full.clone(), vec![(0, full.len(), closed)]));
        }
        let marker = self.eot.as_ref().map(|(m, _)| m.as_str());
        let mut spans = Vec::new();
        for (i, msg) in msgs
            .iter()
            .enumerate()
            .filter(|(_, m)| m.role == "assistant")
        {
            let prefix_of_full = |s: String| full.starts_with(&s).then_some(s.len());
            let mut start = prefix_of_full(self.template.render(&msgs[..i], true)?);
            if start.is_none() {
                // Templates that ignore add_generation_prompt (Mistral) still work from here.
                start = prefix_of_full(self.template.render(&msgs[..i], false)?);
            }
            let end = prefix_of_full(self.template.render(&msgs[..=i], false)?);
            let (Some(start), Some(end)) = (start, end) else {
                return Err(Error::Template(format!(
                    "the template renders turn {} differently once later turns follow, so the \
                     assistant reply cannot be located; train on all tokens instead",
                    i + 1
                )));
            };
            if end < start {
                continue;
            }
            // The reply starts where its text does: templates that ignore
            // add_generation_prompt leave the role header inside the turn.
            let reply = msg.content.trim();
            let (start, turn) = match full[start..end].find(reply) {
                Some(p) if !reply.is_empty() => (start + p, &full[start + p..end]),
                _ => (start, &full[start..end]),
            };
            // Look for the marker after the reply so a reply that quotes it is not cut short.
            let after = if turn.starts_with(reply) {
                reply.len()
            } else {
                0
            };
            let span = match marker.and_then(|m| turn[after..].find(m).map(|p| after + p + m.len()))
            {
                Some(close) => (start, start + close, true),
                None => (start, start + turn.trim_end().len(), false),
            };
            spans.push(span);
        }
        Ok((full, spans))
    }
}

/// A trained byte range `(start, end, template_wrote_end_of_turn)` of the rendered text.
type Span = (usize, usize, bool);

fn push_segment(segments: &mut Vec<Segment>, text: &str, trained: bool) {
    if text.is_empty() {
        return;
    }
    match segments.last_mut() {
        Some(last) if last.trained == trained => last.text.push_str(text),
        _ => segments.push(Segment {
            text: text.to_string(),
            trained,
        }),
    }
}
