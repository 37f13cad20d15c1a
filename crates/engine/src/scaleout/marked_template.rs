//! The model's chat template, wrapped so that TRL's `assistant_only_loss` trains exactly the
//! tokens our renderer trains.
//!
//! TRL masks assistant tokens only through `{% generation %}…{% endgeneration %}` blocks in the
//! template (Hugging Face's `return_assistant_tokens_mask`), which almost no model template
//! has. Instead of patching each template family, the wrapper turns the original template into a
//! macro and re-runs, in Jinja, the prefix-rendering technique `data::render` uses: for
//! assistant message `i` the reply starts where `render(messages[:i], add_generation_prompt)`
//! ends (or `render(messages[:i])` for templates that ignore the flag), is moved forward to the
//! reply's text, and ends after the end-of-turn marker (or at the turn's trimmed end when the
//! template writes none). The rendered text is unchanged; only the markers are added.
//!
//! Everything is expressed with operations Jinja2 and minijinja agree on (character slicing and
//! lengths, `in`, `startswith`, `split`, `rstrip`; not `find`, which minijinja answers in bytes),
//! so [`verify`] can render the same wrapper here — with two private-use characters in place of
//! the markers — and compare its token mask with our renderer's on every exported example.

use crate::data::formats::Example;
use crate::data::render::{RenderOptions, Renderer, TrainOn};
use crate::error::Result;
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;

/// TRL's (Hugging Face's) assistant-mask tags.
pub const GENERATION_TAGS: (&str, &str) = ("{% generation %}", "{% endgeneration %}");

const OPEN: char = '\u{E000}';
const CLOSE: char = '\u{E001}';

/// A Jinja string literal (JSON escaping is valid in both Jinja dialects).
fn lit(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

/// The wrapper around `template`'s source with `open`/`close` around each trained reply;
/// `marker` is the end-of-turn text a reply's span runs to (our renderer's).
pub fn marked_source(
    template: &ChatTemplate,
    marker: Option<&str>,
    open: &str,
    close: &str,
) -> String {
    let close_turn = match marker.filter(|m| !m.is_empty()) {
        Some(m) => format!(
            "{{%- if {m} in __ns.turn[__ns.after:] -%}}\
             {{%- set __ns.e = __ns.s + __ns.after + (__ns.turn[__ns.after:].split({m}, 1)[0] | length) + ({m} | length) -%}}\
             {{%- else -%}}{{%- set __ns.e = __ns.s + (__ns.turn.rstrip() | length) -%}}{{%- endif -%}}\n",
            m = lit(m)
        ),
        None => "{%- set __ns.e = __ns.s + (__ns.turn.rstrip() | length) -%}\n".to_string(),
    };
    let mut s = String::new();
    s.push_str(
        "{#- PEFT Studio: the model's chat template (the macro below, unchanged), wrapped to mark \
         each assistant reply and its end-of-turn marker with generation tags for TRL's \
         assistant_only_loss. -#}\n",
    );
    // `%}` then the source with no newline between (trim_blocks would eat one), and `{%+` so
    // lstrip_blocks does not eat trailing spaces of the source's last line.
    s.push_str("{%- macro __peft_chat(messages, add_generation_prompt) %}");
    s.push_str(template.source());
    s.push_str("{%+ endmacro -%}\n");
    s.push_str(
        "{%- set __ns = namespace(pos=0, s=0, e=0, turn='', after=0, reply='') -%}\n\
         {%- set __full = __peft_chat(messages, add_generation_prompt) -%}\n\
         {%- for __i in range(messages | length) -%}\n\
         {%- if messages[__i]['role'] == 'assistant' -%}\n\
         {%- set __gen = __peft_chat(messages[:__i], true) -%}\n\
         {%- if __full.startswith(__gen) -%}{%- set __ns.s = __gen | length -%}\
         {%- else -%}{%- set __ns.s = __peft_chat(messages[:__i], false) | length -%}{%- endif -%}\n\
         {%- set __ns.e = __peft_chat(messages[:__i + 1], false) | length -%}\n\
         {%- if __ns.e >= __ns.s and __ns.s >= __ns.pos -%}\n\
         {%- set __ns.turn = __full[__ns.s:__ns.e] -%}\n\
         {%- set __ns.reply = messages[__i]['content'] | trim -%}\n\
         {%- if __ns.reply and __ns.reply in __ns.turn -%}\
         {%- set __ns.s = __ns.s + (__ns.turn.split(__ns.reply, 1)[0] | length) -%}\
         {%- set __ns.turn = __full[__ns.s:__ns.e] -%}{%- endif -%}\n\
         {%- if __ns.reply and __ns.turn.startswith(__ns.reply) -%}{%- set __ns.after = __ns.reply | length -%}\
         {%- else -%}{%- set __ns.after = 0 -%}{%- endif -%}\n",
    );
    s.push_str(&close_turn);
    s.push_str(&format!(
        "{{{{- __full[__ns.pos:__ns.s] -}}}}{open}{{{{- __full[__ns.s:__ns.e] -}}}}{close}\n\
         {{%- set __ns.pos = __ns.e -%}}\n\
         {{%- endif -%}}\n\
         {{%- endif -%}}\n\
         {{%- endfor -%}}\n\
         {{{{- __full[__ns.pos:] -}}}}\n"
    ));
    s
}

/// How TRL's masks compare with ours over the exported chat examples.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Verification {
    pub examples: usize,
    /// Examples whose ids or trained positions differ.
    pub differing: usize,
    /// The first difference, for the report.
    pub first: Option<String>,
}

/// Renders the wrapper here (markers as private-use characters) for every chat example, marks
/// tokens that overlap a marked span — what `return_assistant_tokens_mask` does — and compares
/// ids and masks with our renderer (untruncated, assistant-only).
///
/// # Errors
/// Template or tokenizer failures (a wrapper that does not compile is a bug here).
pub fn verify(
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
    examples: &[Example],
) -> Result<Verification> {
    let renderer = Renderer::new(
        tokenizer,
        template,
        RenderOptions {
            max_len: usize::MAX,
            train_on: TrainOn::Assistant,
        },
    )?;
    let src = marked_source(
        template,
        renderer.end_of_turn_marker(),
        &format!("{{{{ {} }}}}", lit(&OPEN.to_string())),
        &format!("{{{{ {} }}}}", lit(&CLOSE.to_string())),
    );
    let marked = ChatTemplate::new(&src, &template.bos_token, &template.eos_token)?;
    let mut v = Verification::default();
    for (n, ex) in examples.iter().enumerate() {
        let Example::Chat(msgs) = ex else { continue };
        v.examples += 1;
        let ours = renderer.tokenize(ex)?;
        let (text, spans) = strip_markers(&marked.render(msgs, false)?);
        let why = if text != template.render(msgs, false)? {
            Some("the wrapped template renders different text".to_string())
        } else {
            let enc = tokenizer
                .inner
                .encode(text.as_str(), false)
                .map_err(|e| crate::Error::Tokenizer(e.to_string()))?;
            let ids = enc.get_ids();
            let mask: Vec<u8> = enc
                .get_offsets()
                .iter()
                .map(|&(a, b)| spans.iter().any(|&(s, e)| a < e && s < b) as u8)
                .collect();
            first_difference(&ours.input_ids, &ours.loss_mask, ids, &mask, tokenizer)
        };
        if let Some(why) = why {
            v.differing += 1;
            if v.first.is_none() {
                v.first = Some(format!("example {}: {why}", n + 1));
            }
        }
    }
    Ok(v)
}

/// The text without markers, and the marked byte spans in it.
fn strip_markers(marked: &str) -> (String, Vec<(usize, usize)>) {
    let (mut text, mut spans, mut start) = (String::new(), Vec::new(), 0);
    for c in marked.chars() {
        match c {
            OPEN => start = text.len(),
            CLOSE => spans.push((start, text.len())),
            c => text.push(c),
        }
    }
    (text, spans)
}

fn first_difference(
    ours: &[u32],
    our_mask: &[u8],
    theirs: &[u32],
    their_mask: &[u8],
    tok: &Tokenizer,
) -> Option<String> {
    if ours == theirs && our_mask == their_mask {
        return None;
    }
    let name = |id: Option<&u32>| match id {
        Some(&id) => tok.id_to_token(id).unwrap_or_else(|| id.to_string()),
        None => "(end)".into(),
    };
    let n = ours.len().max(theirs.len());
    let t = (0..n)
        .find(|&t| ours.get(t) != theirs.get(t) || our_mask.get(t) != their_mask.get(t))
        .unwrap_or(0);
    Some(format!(
        "token {t}: ours {} (trained {}), TRL {} (trained {}); {} vs {} tokens",
        name(ours.get(t)),
        our_mask.get(t).copied().unwrap_or(0),
        name(theirs.get(t)),
        their_mask.get(t).copied().unwrap_or(0),
        ours.len(),
        theirs.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::Message;

    fn bundled() -> crate::model::loaded::LoadedModel {
        crate::model::loaded::LoadedModel::load(
            &crate::model::load::ModelSource::Bundled,
            Default::default(),
            &Default::default(),
        )
        .unwrap()
    }

    fn chat(turns: &[(&str, &str)]) -> Example {
        Example::Chat(turns.iter().map(|(r, c)| Message::new(*r, *c)).collect())
    }

    #[test]
    fn wrapper_renders_the_same_text_and_our_masks() {
        let m = bundled();
        let ex = [
            chat(&[
                ("system", "Be kind."),
                ("user", "Hi"),
                ("assistant", "Hello there."),
                ("user", "Bye"),
                ("assistant", "Bye now."),
            ]),
            chat(&[("user", "Empty?"), ("assistant", "")]),
            // A reply that quotes the end-of-turn text keeps going to the real end of its turn.
            chat(&[("user", "Say </s>"), ("assistant", "I say </s> and stop.")]),
        ];
        let v = verify(&m.template, &m.tokenizer, &ex).unwrap();
        assert_eq!((v.examples, v.differing), (3, 0), "{:?}", v.first);
    }

    #[test]
    fn differences_are_found_and_described() {
        // ChatML markers are several pieces in the bundled vocabulary, so our renderer appends
        // the EOS id after each reply — which no template text can carry: verification says so.
        let m = bundled();
        let chatml = ChatTemplate::new(
            "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
            "<s>",
            "</s>",
        )
        .unwrap();
        let ex = [chat(&[("user", "Hi"), ("assistant", "Hello.")])];
        let v = verify(&chatml, &m.tokenizer, &ex).unwrap();
        assert_eq!(v.differing, 1);
        assert!(v.first.unwrap().contains("token"));
    }
}
