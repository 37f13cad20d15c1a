//! Ollama templates (Go template = Jinja template, per family, multi-turn), Modelfiles, the
//! LoRA adapter GGUF, LM Studio's layout, and the self-check (passing, and catching a broken
//! EOS or template).

#[path = "gguf_export/helpers.rs"]
mod helpers;

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::Device;
use helpers::*;
use peft_engine::export::gguf::{merged_tensor, write_merged_gguf};
use peft_engine::export::gguf_quant::GgufQuant;
use peft_engine::export::go_template::{render, GoValue};
use peft_engine::export::lora_gguf::{attach_lora_gguf, write_lora_gguf};
use peft_engine::export::ollama_template::{ollama_render, ollama_template};
use peft_engine::export::run::{export, ExportFormat, ExportRequest};
use peft_engine::export::selfcheck::{check_exported, CheckOptions};
use peft_engine::template::{ChatTemplate, Message};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const QWEN2: &str = r"{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
const LLAMA2: &str = r"{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";
const MISTRAL: &str = r"{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";
const LLAMA3: &str = r"{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

fn m(role: &str, content: &str) -> Message {
    Message::new(role, content)
}

/// Conversations beyond the probes the mapping was verified on: longer, with system
/// messages, multi-line contents.
fn conversations() -> Vec<Vec<Message>> {
    vec![
        vec![m("user", "Write a haiku.\nAbout rain.")],
        vec![
            m("system", "You are Bolt, a pirate."),
            m("user", "Where is the treasure?"),
            m("assistant", "Under the old oak, matey."),
            m("user", "How deep?"),
            m("assistant", "Ten paces.\nNo more."),
            m("user", "Thanks."),
        ],
        vec![
            m("user", "1"),
            m("assistant", "2"),
            m("user", "3"),
            m("assistant", "4"),
            m("user", "5"),
        ],
    ]
}

/// The Go template renders what the Jinja template renders (less an implicit BOS) for every
/// conversation the Jinja template accepts; returns how many it accepted.
fn assert_equivalent(jinja: &str, bos: &str, eos: &str, implicit_bos: &str, family: &str) -> usize {
    let t = ChatTemplate::new(jinja, bos, eos).unwrap();
    let go = ollama_template(&t, implicit_bos).unwrap();
    assert_eq!(go.family, family);
    let mut n = 0;
    for conv in conversations() {
        let Ok(want) = t.render(&conv, true) else {
            continue;
        };
        let want = want.strip_prefix(implicit_bos).unwrap_or(&want);
        assert_eq!(
            ollama_render(&go, &conv).unwrap(),
            want,
            "{family}: {conv:?}"
        );
        n += 1;
    }
    n
}

#[test]
fn ollama_templates_render_like_the_jinja_templates() {
    let bundled = bundled();
    let fallback = bundled.template.source().to_string();
    assert_eq!(
        assert_equivalent(&fallback, "<s>", "</s>", "<s>", "alpaca"),
        3
    );
    // Without an implicit BOS the Go template writes it itself.
    assert_eq!(assert_equivalent(&fallback, "<s>", "</s>", "", "alpaca"), 3);
    let smollm = peft_engine::model::gguf::open_gguf(&smollm_gguf()).unwrap();
    let chatml = smollm.chat_template.unwrap();
    assert_eq!(
        assert_equivalent(&chatml, "<|im_start|>", "<|im_end|>", "", "chatml"),
        3
    );
    assert_eq!(assert_equivalent(QWEN2, "", "<|im_end|>", "", "chatml"), 3);
    assert_eq!(assert_equivalent(LLAMA2, "<s>", "</s>", "<s>", "llama2"), 3);
    // Mistral's template refuses system messages: two of three conversations.
    assert_eq!(
        assert_equivalent(MISTRAL, "<s>", "</s>", "<s>", "mistral"),
        2
    );
    let l3 = assert_equivalent(
        LLAMA3,
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|begin_of_text|>",
        "llama3",
    );
    assert_eq!(l3, 3);

    // The real templates of the new families (tests/fixtures/templates, with their sources).
    let real = |file: &str| {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/templates")
            .join(file);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let qwen3 = real("qwen3.jinja");
    assert_eq!(
        assert_equivalent(&qwen3, "", "<|im_end|>", "", "chatml-think"),
        3
    );
    let gemma = real("gemma3.jinja");
    assert_eq!(
        assert_equivalent(&gemma, "<bos>", "<eos>", "<bos>", "gemma"),
        3
    );
    let phi35 = real("phi-3.5-mini-instruct.jinja");
    assert_eq!(
        assert_equivalent(&phi35, "<s>", "<|endoftext|>", "", "phi3"),
        3
    );
    let phi4 = real("phi4-mini.jinja");
    assert_eq!(
        assert_equivalent(&phi4, "<|endoftext|>", "<|endoftext|>", "", "phi3"),
        3
    );
    let llama32 = real("llama-3.2-instruct.jinja");
    assert_eq!(
        assert_equivalent(
            &llama32,
            "<|begin_of_text|>",
            "<|eot_id|>",
            "<|begin_of_text|>",
            "llama3-system"
        ),
        3
    );

    // The default system prompt of ChatML templates becomes the Modelfile's SYSTEM.
    let t = ChatTemplate::new(QWEN2, "", "<|im_end|>").unwrap();
    let go = ollama_template(&t, "").unwrap();
    assert_eq!(go.system.as_deref(), Some("You are a helpful assistant."));

    // A template no recipe reproduces is refused, naming the families tried.
    let odd = "{% for message in messages %}<<{{ message['role'] }}>> {{ message['content'] }}\n{% endfor %}";
    let t = ChatTemplate::new(odd, "", "").unwrap();
    let err = ollama_template(&t, "").unwrap_err().to_string();
    assert!(err.contains("chatml") && err.contains("llama2"), "{err}");
}

#[test]
fn go_template_subset_follows_go_semantics() {
    let mut root = std::collections::BTreeMap::new();
    root.insert(
        "Messages".to_string(),
        GoValue::List(vec![GoValue::Str("a".into()), GoValue::Str("b".into())]),
    );
    root.insert("System".to_string(), GoValue::Str(String::new()));
    let data = GoValue::Map(root);
    let r = |t: &str| render(t, &data).unwrap();
    // Trim markers eat all whitespace (newlines too) on their side only.
    assert_eq!(r("x \n {{- \"y\" -}} \n z"), "xyz");
    assert_eq!(r("x \n {{ \"y\" }} \n z"), "x \n y \n z");
    // range with index and value; $ is the root; slice/len/eq find the last element.
    assert_eq!(
        r("{{ range $i, $m := .Messages }}{{ $i }}={{ $m }}{{ if eq (len (slice $.Messages $i)) 1 }}!{{ else }},{{ end }}{{ end }}"),
        "0=a,1=b!"
    );
    // Empty strings are false; `and`/`or` return operands; else-if chains.
    assert_eq!(
        r("{{ if .System }}s{{ else if gt 2 1 }}g{{ else }}e{{ end }}"),
        "g"
    );
    assert_eq!(r("{{ or .System \"dflt\" }}"), "dflt");
    assert_eq!(
        r("{{ $x := 1 }}{{ range .Messages }}{{ $x = 2 }}{{ end }}{{ $x }}"),
        "2"
    );
    assert!(
        render("{{ .Foo | printf }}", &data).is_err(),
        "pipes are outside the subset"
    );
}

#[test]
fn ollama_export_writes_a_modelfile_that_chats_like_the_app() {
    let base = bundled();
    let mut d = dense(&base);
    attach_random_lora(&mut d, 4, 0.25, 3);
    let dir = tempfile::tempdir().unwrap();
    let req = ExportRequest {
        format: ExportFormat::Ollama,
        quant: GgufQuant::Q8_0,
        out: dir.path().join("ollama"),
        name: "Stories Tuned".into(),
        publisher: "peft-studio".into(),
        check: CheckOptions {
            max_new_tokens: 8,
            ..CheckOptions::default()
        },
        cancel: None,
    };
    let r = export(&parts(&base, &d), &req, &mut |_| {}).unwrap();
    assert!(r.self_check.passed(), "{}", r.self_check.summary());
    assert_eq!(r.self_check.prompts.len(), 4);
    assert!(r.self_check.prompts.iter().all(|p| p.prompt_matches));
    let mf = std::fs::read_to_string(req.out.join("Modelfile")).unwrap();
    assert!(mf.contains("FROM ./stories-tuned-Q8_0.gguf"), "{mf}");
    assert!(mf.contains("TEMPLATE \"\"\""), "{mf}");
    assert!(mf.contains("PARAMETER stop \"</s>\""), "{mf}");
    assert!(mf.contains("PARAMETER temperature 0.7"), "{mf}");
    assert!(req.out.join("stories-tuned-Q8_0.gguf").exists());
    let readme = std::fs::read_to_string(req.out.join("README.md")).unwrap();
    let cmd = format!(
        "ollama create stories-tuned -f {}",
        req.out.join("Modelfile").display()
    );
    assert!(readme.contains(&cmd), "{readme}");
    assert_eq!(r.next_steps[0], cmd);

    // LM Studio: publisher/model/file.gguf under the models folder.
    let lms = ExportRequest {
        format: ExportFormat::Lmstudio,
        quant: GgufQuant::F16,
        out: dir.path().join("models"),
        ..req
    };
    let r = export(&parts(&base, &d), &lms, &mut |_| {}).unwrap();
    let want = dir
        .path()
        .join("models/peft-studio/stories-tuned/stories-tuned-F16.gguf");
    assert_eq!(r.files, vec![want.clone()]);
    assert!(want.exists());
    assert!(r.self_check.strict && r.self_check.passed());
}

/// A decoder whose every next token is `</s>` (id 2): embedding column 0 is a constant 5 that
/// no block writes to, and the head's `</s>` row reads only that column.
fn always_eos_decoder() -> peft_engine::model::decoder::Decoder {
    let mut d = random_decoder(llama_dims(), 21);
    let dev = Device::Cpu;
    let col = |t: &candle_core::Tensor, v: f32| {
        let (r, c) = t.dims2().unwrap();
        let mut data: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        for i in 0..r {
            data[i * c] = v;
        }
        candle_core::Tensor::from_vec(data, (r, c), &dev).unwrap()
    };
    let row0 = |t: &candle_core::Tensor| {
        let (r, c) = t.dims2().unwrap();
        let mut data: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        data[..c].iter_mut().for_each(|x| *x = 0.0);
        candle_core::Tensor::from_vec(data, (r, c), &dev).unwrap()
    };
    use peft_engine::model::linear::Base;
    d.embed_tokens = col(&d.embed_tokens, 5.0);
    for b in d.layers.iter_mut() {
        for lin in [&mut b.self_attn.o_proj, &mut b.mlp.down_proj] {
            if let Base::Dense(w) = &lin.base {
                lin.base = Base::Dense(row0(w));
            }
        }
    }
    let head = d.lm_head.as_mut().unwrap();
    if let Base::Dense(w) = &head.base {
        let (r, c) = w.dims2().unwrap();
        let mut data: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        data[2 * c..3 * c].iter_mut().for_each(|x| *x = 0.0);
        data[2 * c] = 50.0;
        head.base = Base::Dense(candle_core::Tensor::from_vec(data, (r, c), &dev).unwrap());
    }
    d
}

/// Rewrites a GGUF with some metadata replaced (candle's in-memory writer; tiny files only).
fn rewrite(path: &Path, changes: &[(&str, Value)]) {
    let mut f = std::fs::File::open(path).unwrap();
    let c = Content::read(&mut f).unwrap();
    let mut md = c.metadata.clone();
    for (k, v) in changes {
        md.insert(k.to_string(), v.clone());
    }
    let tensors: Vec<(String, candle_core::quantized::QTensor)> = c
        .tensor_infos
        .keys()
        .map(|n| (n.clone(), c.tensor(&mut f, n, &Device::Cpu).unwrap()))
        .collect();
    drop(f);
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &candle_core::quantized::QTensor)> =
        tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut out, &md_refs, &t_refs).unwrap();
}

#[test]
fn self_check_catches_a_broken_eos_and_a_wrong_template() {
    let base = bundled();
    let d = always_eos_decoder();
    let tuned = parts(&base, &d);
    let opts = CheckOptions {
        max_new_tokens: 6,
        ..CheckOptions::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    write_merged_gguf(&tuned, GgufQuant::Q8_0, &path, None, &mut |_| {}).unwrap();
    let ok = check_exported(&tuned, &path, false, &opts, None, &mut |_| {}).unwrap();
    assert!(ok
        .prompts
        .iter()
        .all(|p| p.tuned_stopped && p.exported_stopped));

    // EOS pointing at another token: the exported model never ends its turn.
    rewrite(&path, &[("tokenizer.ggml.eos_token_id", Value::U32(3))]);
    let err = check_exported(&tuned, &path, false, &opts, None, &mut |_| {}).unwrap_err();
    assert_eq!(err.code(), "ExportCheckFailed");
    assert!(err.to_string().contains("does not stop"), "{err}");

    // A template that is not the one the model was tuned with.
    write_merged_gguf(&tuned, GgufQuant::Q8_0, &path, None, &mut |_| {}).unwrap();
    rewrite(
        &path,
        &[("tokenizer.chat_template", Value::String(QWEN2.into()))],
    );
    let err = check_exported(&tuned, &path, false, &opts, None, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("renders"), "{err}");
}

#[test]
fn lora_adapter_gguf_carries_the_same_deltas() {
    let base = bundled();
    let mut d = dense(&base);
    // rsLoRA-style scale alpha/√r with alpha 8, r 4: written as alpha' = scale·r = 16.
    attach_random_lora(&mut d, 4, 8.0 / 2.0, 5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.gguf");
    let s = write_lora_gguf(&d, GgufQuant::F32, "t", &path, None, &mut |_| {}).unwrap();
    assert_eq!((s.layers, s.rank, s.alpha), (5 * 7, 4, 16.0));
    let (c, raw) = read_raw(&path);
    assert_eq!(meta_str(&c, "general.type"), "adapter");
    assert_eq!(meta_str(&c, "adapter.type"), "lora");
    assert_eq!(meta_str(&c, "general.architecture"), "llama");
    assert_eq!(c.metadata["adapter.lora.alpha"].to_f32().unwrap(), 16.0);
    // ggml dims: A ne = [in, r], B ne = [r, out] (candle shapes reversed).
    assert_eq!(
        c.tensor_infos["blk.0.attn_q.weight.lora_a"].shape.dims(),
        &[4, 64]
    );
    assert_eq!(
        c.tensor_infos["blk.0.ffn_down.weight.lora_b"].shape.dims(),
        &[64, 4]
    );
    // q's B rows are permuted like q's base rows; v's are not.
    let block = &d.layers[0];
    let b_q = block
        .linear("self_attn.q_proj")
        .unwrap()
        .lora
        .as_ref()
        .unwrap()
        .b
        .clone();
    let want = peft_engine::model::gguf::permute_rope_rows(&b_q, 8).unwrap();
    assert_eq!(max_abs_diff(&raw["blk.0.attn_q.weight.lora_b"], &want), 0.0);
    let b_v = block
        .linear("self_attn.v_proj")
        .unwrap()
        .lora
        .as_ref()
        .unwrap()
        .b
        .clone();
    assert_eq!(max_abs_diff(&raw["blk.0.attn_v.weight.lora_b"], &b_v), 0.0);
    // Reading it back as llama.cpp would (scale = alpha / r) gives every delta again.
    let back = attach_lora_gguf(&d, &path).unwrap();
    for n in 0..d.layers.len() {
        for part in ["self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj"] {
            let name = format!("model.layers.{n}.{part}.weight");
            let diff = max_abs_diff(
                &merged_tensor(&back, &name).unwrap(),
                &merged_tensor(&d, &name).unwrap(),
            );
            assert!(diff < 1e-6, "{name}: {diff}");
        }
    }
    // The export call checks it by generation too (f32: tokens must be identical).
    let req = ExportRequest {
        format: ExportFormat::GgufAdapter,
        quant: GgufQuant::F32,
        out: dir.path().to_path_buf(),
        name: "t".into(),
        publisher: String::new(),
        check: CheckOptions {
            max_new_tokens: 8,
            ..CheckOptions::default()
        },
        cancel: None,
    };
    let r = export(&parts(&base, &d), &req, &mut |_| {}).unwrap();
    assert!(r.self_check.passed(), "{}", r.self_check.summary());

    // What the format cannot carry is refused by name.
    let err = write_lora_gguf(&dense(&base), GgufQuant::F16, "t", &path, None, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("merged GGUF"), "{err}");
    let err = write_lora_gguf(&d, GgufQuant::Q4KM, "t", &path, None, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("f16 or f32"), "{err}");
}

#[test]
fn a_cancelled_export_stops_between_tensors_and_leaves_no_file() {
    let base = bundled();
    let d = dense(&base);
    let dir = tempfile::tempdir().unwrap();
    let cancel = Arc::new(AtomicBool::new(false));
    let req = ExportRequest {
        format: ExportFormat::Gguf,
        quant: GgufQuant::Q8_0,
        out: dir.path().join("m.gguf"),
        name: "t".into(),
        publisher: String::new(),
        check: CheckOptions {
            max_new_tokens: 4,
            ..CheckOptions::default()
        },
        cancel: Some(cancel.clone()),
    };
    // Stopped while writing: after the second tensor, before the third; nothing is left, not
    // even the temporary file.
    let mut written = 0;
    let err = export(&parts(&base, &d), &req, &mut |_| {
        written += 1;
        if written == 2 {
            cancel.store(true, Ordering::Relaxed);
        }
    })
    .unwrap_err();
    assert!(matches!(err, peft_engine::Error::Cancelled), "{err}");
    assert_eq!(written, 2);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    // Stopped while checking: the complete file stays, the check stops before the next
    // conversation.
    cancel.store(false, Ordering::Relaxed);
    let mut checked = 0;
    let err = export(&parts(&base, &d), &req, &mut |p| {
        if p.stage == "checking" {
            checked += 1;
            cancel.store(true, Ordering::Relaxed);
        }
    })
    .unwrap_err();
    assert!(matches!(err, peft_engine::Error::Cancelled), "{err}");
    assert_eq!(checked, 1);
    assert!(req.out.is_file());
}
