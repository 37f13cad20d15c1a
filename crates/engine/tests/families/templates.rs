//! The real chat templates of the new families (files in `tests/fixtures/templates`, sources in
//! its README) rendered by our minijinja renderer must equal what transformers'
//! `apply_chat_template` rendered (`rendered.json`, from `scripts/make_family_fixtures.py`),
//! for a multi-turn conversation with and without the generation prompt.

use crate::common::fixtures_dir;
use peft_engine::template::{ChatTemplate, Message};

#[test]
fn real_templates_render_exactly_as_transformers_renders_them() {
    let dir = fixtures_dir().join("templates");
    let path = dir.join("rendered.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run scripts/make_family_fixtures.py)",
            path.display()
        )
    });
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 12);
    for case in cases {
        let file = case["template"].as_str().unwrap();
        let src = std::fs::read_to_string(dir.join(file)).unwrap();
        let mut t = ChatTemplate::new(
            &src,
            case["bos_token"].as_str().unwrap(),
            case["eos_token"].as_str().unwrap(),
        )
        .unwrap();
        // Qwen3: our default is enable_thinking = false; the `true` case sets it.
        if case["kwargs"]["enable_thinking"] == true {
            t.set_enable_thinking(true);
        }
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let gen = case["add_generation_prompt"].as_bool().unwrap();
        let got = t.render(&messages, gen).unwrap();
        let want = case["expected"].as_str().unwrap();
        assert_eq!(got, want, "{file} (generation prompt: {gen})");
    }
}

#[test]
fn chat_defaults_to_no_thinking_for_qwen3_and_ends_turns_on_each_familys_marker() {
    let dir = fixtures_dir().join("templates");
    let src = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let q = ChatTemplate::new(&src("qwen3.jinja"), "", "<|im_end|>").unwrap();
    let prompt = q.render(&[Message::new("user", "Hi")], true).unwrap();
    assert!(
        prompt.ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"),
        "{prompt:?}"
    );
    for (file, marker) in [
        ("llama-3.2-instruct.jinja", "<|eot_id|>"),
        ("qwen3.jinja", "<|im_end|>"),
        ("gemma3.jinja", "<end_of_turn>"),
        ("phi-3.5-mini-instruct.jinja", "<|end|>"),
        ("phi4-mini.jinja", "<|end|>"),
    ] {
        let t = ChatTemplate::new(&src(file), "<s>", "</s>").unwrap();
        assert_eq!(t.end_of_turn().as_deref(), Some(marker), "{file}");
    }
}
