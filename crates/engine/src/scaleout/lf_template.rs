//! Which LLaMA-Factory `template:` renders conversations exactly as the model's chat template.
//!
//! LLaMA-Factory does not run the model's Jinja template when it trains: each registered
//! template is a set of string slots (prefix, system, user, assistant) it fills itself, so a
//! wrong `template:` silently trains a different format (the trap the notes warn about). Here a
//! few registered templates are transcribed from LLaMA-Factory 0.9.5's `data/template.py` and
//! rendered on probe conversations next to our own rendering of the model's template; the first
//! that renders identically is chosen, with the default system prompt the model's template
//! inserts (if any) recovered so it can be passed as `default_system`.
//!
//! What this is not: a full LLaMA-Factory template engine (tools, thinking and multimodal slots
//! are left out; probes use plain text turns).

use crate::template::{ChatTemplate, Message};

/// One registered LLaMA-Factory template. `{{content}}` is the message text; `<bos>`/`<eos>`
/// stand for the tokenizer's BOS/EOS tokens (LLaMA-Factory's `{"bos_token"}` slots).
struct Lf {
    name: &'static str,
    prefix: &'static str,
    system: &'static str,
    user: &'static str,
    assistant: &'static str,
    /// `Llama2Template`: the system text is put inside the first user message.
    fuse_system: bool,
}

const CANDIDATES: [Lf; 8] = [
    Lf {
        name: "chatml",
        prefix: "",
        system: "<|im_start|>system\n{{content}}<|im_end|>\n",
        user: "<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",
        assistant: "{{content}}<|im_end|>\n",
        fuse_system: false,
    },
    Lf {
        name: "llama3",
        prefix: "<bos>",
        system: "<|start_header_id|>system<|end_header_id|>\n\n{{content}}<|eot_id|>",
        user: "<|start_header_id|>user<|end_header_id|>\n\n{{content}}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        assistant: "{{content}}<|eot_id|>",
        fuse_system: false,
    },
    Lf {
        name: "phi",
        prefix: "",
        system: "<|system|>\n{{content}}<|end|>\n",
        user: "<|user|>\n{{content}}<|end|>\n<|assistant|>\n",
        assistant: "{{content}}<|end|>\n",
        fuse_system: false,
    },
    Lf {
        name: "phi4",
        prefix: "",
        system: "<|im_start|>system<|im_sep|>{{content}}<|im_end|>",
        user: "<|im_start|>user<|im_sep|>{{content}}<|im_end|><|im_start|>assistant<|im_sep|>",
        assistant: "{{content}}<|im_end|>",
        fuse_system: false,
    },
    Lf {
        name: "gemma",
        prefix: "<bos>",
        system: "{{content}}\n\n",
        user: "<start_of_turn>user\n{{content}}<end_of_turn>\n<start_of_turn>model\n",
        assistant: "{{content}}<end_of_turn>\n",
        fuse_system: true,
    },
    Lf {
        name: "mistral",
        prefix: "<bos>",
        system: "{{content}}\n\n",
        user: "[INST] {{content}}[/INST]",
        assistant: " {{content}}<eos>",
        fuse_system: true,
    },
    Lf {
        name: "llama2",
        prefix: "",
        system: "<<SYS>>\n{{content}}\n<</SYS>>\n\n",
        user: "<bos>[INST] {{content}} [/INST]",
        assistant: "{{content}}<eos>",
        fuse_system: true,
    },
    Lf {
        name: "alpaca",
        prefix: "",
        system: "{{content}}",
        user: "### Instruction:\n{{content}}\n\n### Response:\n",
        assistant: "{{content}}<eos>\n\n",
        fuse_system: false,
    },
];

/// The outcome of matching.
#[derive(Clone, Debug, PartialEq)]
pub struct LfMatch {
    /// The `template:` value; `None` leaves it out (LLaMA-Factory then parses the tokenizer's
    /// Jinja template heuristically).
    pub name: Option<&'static str>,
    /// The `default_system:` value (`""` turns LLaMA-Factory's own default system prompt off).
    pub default_system: String,
    /// True when the probes render identically.
    pub exact: bool,
    /// What differs, when not exact.
    pub difference: Option<String>,
}

fn fill(slot: &str, content: &str, t: &ChatTemplate) -> String {
    slot.replace("<bos>", &t.bos_token)
        .replace("<eos>", &t.eos_token)
        .replace("{{content}}", content)
}

/// LLaMA-Factory's `Template._encode` / `Llama2Template._encode`, as text.
fn render(lf: &Lf, msgs: &[Message], default_system: &str, t: &ChatTemplate) -> String {
    let (system, turns) = match msgs.first() {
        Some(m) if m.role == "system" => (m.content.as_str(), &msgs[1..]),
        _ => (default_system, msgs),
    };
    let mut out = fill(lf.prefix, "", t);
    let mut fused = String::new();
    if !system.is_empty() {
        if lf.fuse_system {
            fused = fill(lf.system, system, t);
        } else {
            out.push_str(&fill(lf.system, system, t));
        }
    }
    for (i, m) in turns.iter().enumerate() {
        if m.role == "user" {
            let content = if i == 0 {
                format!("{fused}{}", m.content)
            } else {
                m.content.clone()
            };
            out.push_str(&fill(lf.user, &content, t));
        } else {
            out.push_str(&fill(lf.assistant, &m.content, t));
        }
    }
    out
}

fn probes() -> (Vec<Message>, Vec<Message>) {
    let with_system = vec![
        Message::new("system", "You answer briefly."),
        Message::new("user", "Name a colour."),
        Message::new("assistant", "Blue."),
        Message::new("user", "Another one?"),
        Message::new("assistant", "Green."),
    ];
    let without = with_system[1..].to_vec();
    (with_system, without)
}

/// The default system text `lf` must be given so the model's rendering of `msgs` (no system
/// turn) is reproduced, if there is one.
fn default_system_for(lf: &Lf, msgs: &[Message], ours: &str, t: &ChatTemplate) -> Option<String> {
    if render(lf, msgs, "", t) == ours {
        return Some(String::new());
    }
    if lf.fuse_system {
        return None;
    }
    let (pre, post) = lf.system.split_once("{{content}}")?;
    let head = format!("{}{}", fill(lf.prefix, "", t), fill(pre, "", t));
    let plain = render(lf, msgs, "", t);
    let rest = &plain[fill(lf.prefix, "", t).len()..];
    let post = fill(post, "", t);
    let middle = ours.strip_prefix(&head)?.strip_suffix(rest)?;
    let d = middle.strip_suffix(&post)?.to_string();
    (!d.is_empty() && render(lf, msgs, &d, t) == ours).then_some(d)
}

/// Picks the LLaMA-Factory template for `template`. The built-in fallback (Alpaca headers)
/// maps to `alpaca` with its default system prompt turned off; the differences that remain are
/// reported.
pub fn match_template(template: &ChatTemplate) -> LfMatch {
    let (with_system, without) = probes();
    let ours_without = template.render(&without, false).ok();
    let ours_with = template.render(&with_system, false).ok();
    for lf in &CANDIDATES {
        let Some(ours) = &ours_without else { break };
        let Some(d) = default_system_for(lf, &without, ours, template) else {
            continue;
        };
        // A template that refuses system turns (Gemma's) is matched on the others.
        let system_ok = ours_with
            .as_ref()
            .is_none_or(|o| *o == render(lf, &with_system, &d, template));
        if system_ok {
            return LfMatch {
                name: Some(lf.name),
                default_system: d,
                exact: true,
                difference: None,
            };
        }
    }
    if template.is_fallback() {
        let alpaca = CANDIDATES
            .iter()
            .find(|c| c.name == "alpaca")
            .expect("listed");
        let theirs = render(alpaca, &without, "", template);
        return LfMatch {
            name: Some("alpaca"),
            default_system: String::new(),
            exact: false,
            difference: Some(format!(
                "our built-in format renders {:?}; LLaMA-Factory's alpaca template renders {:?} \
                 (no BOS text at the start, and a trained blank line after each reply's EOS)",
                ours_without.unwrap_or_default(),
                theirs
            )),
        };
    }
    LfMatch {
        name: None,
        default_system: String::new(),
        exact: false,
        difference: Some(
            "no registered LLaMA-Factory template renders like this model's chat template; \
             `template:` is left out, so LLaMA-Factory parses the tokenizer's template itself \
             (its parse_template heuristic) — check its rendering of one example before a long run"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_matches_and_a_default_system_prompt_is_recovered() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let m = match_template(&t);
        assert_eq!(
            (m.name, m.exact, m.default_system.as_str()),
            (Some("chatml"), true, "")
        );
        // SmolLM2-style: a default system turn when none is given.
        let smol = format!(
            "{{% if messages[0]['role'] != 'system' %}}{{{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}}}{{% endif %}}{CHATML}"
        );
        let t = ChatTemplate::new(&smol, "", "<|im_end|>").unwrap();
        let m = match_template(&t);
        assert_eq!(m.name, Some("chatml"));
        assert_eq!(
            m.default_system,
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
        );
    }

    #[test]
    fn fallback_maps_to_alpaca_with_the_difference_named() {
        let t = ChatTemplate::fallback("<s>", "</s>");
        let m = match_template(&t);
        assert_eq!((m.name, m.exact), (Some("alpaca"), false));
        assert!(m.difference.unwrap().contains("BOS"));
    }

    #[test]
    fn unknown_template_leaves_the_name_out() {
        let t = ChatTemplate::new(
            "{% for m in messages %}<<{{ m['role'] }}>>{{ m['content'] }}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let m = match_template(&t);
        assert_eq!((m.name, m.exact), (None, false));
    }
}
