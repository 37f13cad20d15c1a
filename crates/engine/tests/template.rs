//! Chat templates rendered with HF semantics. Every expected string below was derived by hand
//! from the template text (and, for SmolLM2 and Zephyr, matches the prompts those models
//! document).

use peft_engine::template::{ChatTemplate, Message};
use peft_engine::Error;

const SMOLLM2_GGUF: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/models/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf"
);
const STORIES_CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/models/stories260K/tokenizer_config.json"
);

/// `tokenizer.chat_template` of SmolLM2-135M-Instruct.Q4_1.gguf, copied verbatim.
const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Meta-Llama-3-8B-Instruct's template.
const LLAMA3_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

/// Mistral-7B-Instruct-v0.1's template.
const MISTRAL_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

/// Zephyr's multi-line template, indented here to exercise `lstrip_blocks` as well as
/// `trim_blocks`: block-tag lines vanish, the newline after each `{{ }}` line stays.
const ZEPHYR_TEMPLATE: &str = "{% for message in messages %}
    {% if message['role'] == 'user' %}
{{ '<|user|>\n' + message['content'] + eos_token }}
    {% elif message['role'] == 'system' %}
{{ '<|system|>\n' + message['content'] + eos_token }}
    {% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\n'  + message['content'] + eos_token }}
    {% endif %}
    {% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
    {% endif %}
{% endfor %}";

fn msgs(turns: &[(&str, &str)]) -> Vec<Message> {
    turns.iter().map(|(r, c)| Message::new(*r, *c)).collect()
}

#[test]
fn smollm2_template_from_gguf_renders_chatml() {
    let mut f = std::fs::File::open(SMOLLM2_GGUF).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    let t = ChatTemplate::from_gguf_metadata(&content.metadata).unwrap();
    assert_eq!(t.source(), SMOLLM2_TEMPLATE);
    assert_eq!(
        (t.bos_token.as_str(), t.eos_token.as_str()),
        ("<|im_start|>", "<|im_end|>")
    );
    assert!(!t.is_fallback());
    let m = msgs(&[("user", "Hi"), ("assistant", "Hello!"), ("user", "2+2?")]);
    let expected = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
                    <|im_start|>user\nHi<|im_end|>\n\
                    <|im_start|>assistant\nHello!<|im_end|>\n\
                    <|im_start|>user\n2+2?<|im_end|>\n\
                    <|im_start|>assistant\n";
    assert_eq!(t.render(&m, true).unwrap(), expected);
    // Without the generation prompt the assistant header is absent; a system turn replaces the
    // default system prompt.
    let m = msgs(&[("system", "Be terse."), ("user", "Hi")]);
    assert_eq!(
        t.render(&m, false).unwrap(),
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
    assert_eq!(t.end_of_turn().as_deref(), Some("<|im_end|>"));
}

#[test]
fn llama3_template_trims_and_prepends_bos() {
    let t = ChatTemplate::new(LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|end_of_text|>").unwrap();
    let m = msgs(&[("system", "Be brief."), ("user", "  Hi there \n")]);
    let expected =
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
                    <|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>\
                    <|start_header_id|>assistant<|end_header_id|>\n\n";
    assert_eq!(t.render(&m, true).unwrap(), expected);
    assert_eq!(t.end_of_turn().as_deref(), Some("<|eot_id|>"));
}

#[test]
fn mistral_template_and_raise_exception() {
    let t = ChatTemplate::new(MISTRAL_TEMPLATE, "<s>", "</s>").unwrap();
    let m = msgs(&[("user", "Hi"), ("assistant", "Hello"), ("user", "Bye")]);
    assert_eq!(
        t.render(&m, true).unwrap(),
        "<s>[INST] Hi [/INST]Hello</s>[INST] Bye [/INST]"
    );
    assert_eq!(t.end_of_turn().as_deref(), Some("</s>"));

    let err = t
        .render(&msgs(&[("user", "a"), ("user", "b")]), false)
        .unwrap_err();
    match &err {
        Error::Template(msg) => assert_eq!(
            msg,
            "Conversation roles must alternate user/assistant/user/assistant/..."
        ),
        other => panic!("expected a template error, got {other:?}"),
    }
    assert_eq!(err.code(), "ChatTemplate");
    let err = t
        .render(&msgs(&[("user", "a"), ("system", "s")]), false)
        .unwrap_err();
    assert!(
        matches!(err, Error::Template(m) if m == "Only user and assistant roles are supported!")
    );
}

#[test]
fn multi_line_template_uses_trim_and_lstrip_blocks() {
    let t = ChatTemplate::new(ZEPHYR_TEMPLATE, "<s>", "</s>").unwrap();
    let m = msgs(&[("system", "S"), ("user", "Hi")]);
    assert_eq!(
        t.render(&m, true).unwrap(),
        "<|system|>\nS</s>\n<|user|>\nHi</s>\n<|assistant|>\n"
    );
}

#[test]
fn python_methods_and_hf_tojson() {
    let src = "{% for m in messages %}{{ m['content'].strip().upper() }}\
               {% if m['role'].startswith('u') %}!{% endif %}|{% endfor %}\
               {{ messages[0] | tojson }}|{{ {'b': [1, 2.5, none, true]} | tojson(indent=2) }}";
    let t = ChatTemplate::new(src, "", "").unwrap();
    let out = t
        .render(&msgs(&[("user", "  a<b  "), ("assistant", "ok")]), false)
        .unwrap();
    // Python's json.dumps: ", "/": " separators, no HTML escaping of `<`.
    assert_eq!(
        out,
        "A<B!|OK|{\"role\": \"user\", \"content\": \"  a<b  \"}|{\n  \"b\": [\n    1,\n    2.5,\n    null,\n    true\n  ]\n}"
    );
}

#[test]
fn tokenizer_config_variants_and_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer_config.json");
    let cfg = serde_json::json!({
        "bos_token": {"content": "<s>", "lstrip": false},
        "eos_token": "</s>",
        "chat_template": [
            {"name": "tool_use", "template": "TOOLS"},
            {"name": "default", "template": "{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}"}
        ]
    });
    std::fs::write(&path, cfg.to_string()).unwrap();
    let t = ChatTemplate::from_tokenizer_config(&path).unwrap();
    assert_eq!(
        t.render(&msgs(&[("user", "x")]), false).unwrap(),
        "<s>x</s>"
    );

    // stories260K ships no template: the documented fallback, with its own BOS/EOS strings.
    let t = ChatTemplate::from_tokenizer_config(STORIES_CONFIG.as_ref()).unwrap();
    assert!(t.is_fallback());
    let m = msgs(&[
        ("system", "S"),
        ("user", "Q"),
        ("assistant", "A"),
        ("user", "Q2"),
    ]);
    assert_eq!(
        t.render(&m, true).unwrap(),
        "<s>S\n\n### Instruction:\nQ\n\n### Response:\nA</s>\n\n### Instruction:\nQ2\n\n### Response:\n"
    );
    assert_eq!(
        t.render(&msgs(&[("user", "Q"), ("assistant", "A")]), false)
            .unwrap(),
        "<s>### Instruction:\nQ\n\n### Response:\nA</s>"
    );
    assert_eq!(t.end_of_turn().as_deref(), Some("</s>"));
    assert!(matches!(
        t.render(&msgs(&[("tool", "x")]), false),
        Err(Error::Template(m)) if m.contains("no role tool")
    ));
}

#[test]
fn bad_template_source_is_a_template_error() {
    let err = ChatTemplate::new("{% for m in messages %}", "", "").unwrap_err();
    assert!(matches!(err, Error::Template(_)), "{err:?}");
    let missing = std::path::Path::new("/nonexistent/tokenizer_config.json");
    assert!(matches!(
        ChatTemplate::from_tokenizer_config(missing),
        Err(Error::Io { .. })
    ));
}
