//! The dataset pipeline: formats, malformed rows, loss masks, batching and the inspect report.

use peft_engine::data::batch::{batch_indices, epoch_order, make_batch, split};
use peft_engine::data::formats::{load, DataFormat, Example, LoadOptions};
use peft_engine::data::inspect::inspect;
use peft_engine::data::render::{RenderOptions, Renderer, TokenizedExample, TrainOn};
use peft_engine::template::{ChatTemplate, Message};
use peft_engine::{Error, Tokenizer};
use std::path::{Path, PathBuf};

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared");

fn shared(rel: &str) -> PathBuf {
    Path::new(SHARED).join(rel)
}

fn smollm2() -> (Tokenizer, ChatTemplate) {
    let dir = shared("models/smollm2-135m-instruct-q4_1");
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let mut f = std::fs::File::open(dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    (
        tok,
        ChatTemplate::from_gguf_metadata(&content.metadata).unwrap(),
    )
}

/// stories260K: a Llama-2 SentencePiece tokenizer whose post-processor adds `<s>`, no template.
fn stories() -> (Tokenizer, ChatTemplate) {
    let dir = shared("models/stories260K");
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let tmpl = ChatTemplate::from_tokenizer_config(&dir.join("tokenizer_config.json")).unwrap();
    (tok, tmpl)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn chat(turns: &[(&str, &str)]) -> Example {
    Example::Chat(turns.iter().map(|(r, c)| Message::new(*r, *c)).collect())
}

/// Contiguous runs of trained ids, each decoded with specials kept.
fn trained_runs(tok: &Tokenizer, ex: &TokenizedExample) -> Vec<String> {
    let mut runs: Vec<Vec<u32>> = Vec::new();
    let mut prev = false;
    for (&id, &m) in ex.input_ids.iter().zip(&ex.loss_mask) {
        match (m != 0, prev) {
            (true, true) => runs.last_mut().unwrap().push(id),
            (true, false) => runs.push(vec![id]),
            _ => {}
        }
        prev = m != 0;
    }
    runs.iter().map(|r| tok.decode(r, false).unwrap()).collect()
}

fn data_err(e: Error) -> (usize, String) {
    match e {
        Error::Data { line, field, .. } => (line, field),
        other => panic!("expected a data error, got {other:?}"),
    }
}

#[test]
fn every_format_is_detected_and_normalised() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LoadOptions::default();
    let ua = |u: &str, a: &str| chat(&[("user", u), ("assistant", a)]);
    let sua = chat(&[("system", "S"), ("user", "U"), ("assistant", "A")]);
    let completion = Example::Completion {
        prompt: "P".into(),
        completion: "C".into(),
    };
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, DataFormat, Example)> = vec![
        ("alpaca.jsonl", "{\"instruction\": \"Add\", \"input\": \"2+2\", \"output\": \"4\"}\n",
            DataFormat::Alpaca, ua("Add\n\n2+2", "4")),
        ("alpaca_noinput.jsonl", "\n{\"instruction\": \"Hi\", \"output\": \"Hello\"}\n\n",
            DataFormat::Alpaca, ua("Hi", "Hello")),
        ("chat.jsonl", r#"{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]}"#,
            DataFormat::Chat, sua.clone()),
        ("sharegpt.jsonl", r#"{"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "U"}, {"from": "gpt", "value": "A"}]}"#,
            DataFormat::ShareGpt, sua),
        ("pc.jsonl", r#"{"prompt": "P", "completion": "C"}"#, DataFormat::PromptCompletion, completion),
        ("qa.jsonl", r#"{"question": "Q", "answer": "A"}"#, DataFormat::QuestionAnswer, ua("Q", "A")),
        ("pr.jsonl", r#"{"prompt": "Q", "response": "A", "category": "x"}"#, DataFormat::QuestionAnswer, ua("Q", "A")),
        ("text.jsonl", r#"{"text": "T"}"#, DataFormat::Text, Example::Text("T".into())),
        ("array.json", "[\n {\"text\": \"one\"},\n {\"text\": \"two\"}\n]", DataFormat::Text, Example::Text("one".into())),
        ("alpaca.csv", "instruction,input,output\nAdd,\"2+2\",\"four,\nexactly\"\nB,,C\n",
            DataFormat::Alpaca, ua("Add\n\n2+2", "four,\nexactly")),
    ];
    for (name, text, format, first) in cases {
        let ds = load(&write(dir.path(), name, text), &opts).unwrap();
        assert_eq!(ds.format, format, "{name}");
        assert_eq!(ds.examples[0], first, "{name}");
        assert_eq!(ds.skipped, 0);
    }
    // Line numbers: JSONL counts blank lines, arrays count elements, CSV counts file lines.
    let ds = load(&dir.path().join("alpaca_noinput.jsonl"), &opts).unwrap();
    assert_eq!(ds.lines, vec![2]);
    let ds = load(&dir.path().join("array.json"), &opts).unwrap();
    assert_eq!((ds.examples.len(), ds.lines.clone()), (2, vec![1, 2]));
    let ds = load(&dir.path().join("alpaca.csv"), &opts).unwrap();
    assert_eq!(ds.lines, vec![2, 4]);
    assert_eq!(ds.examples[1], chat(&[("user", "B"), ("assistant", "C")]));
    // A chat kept in a CSV cell as JSON.
    let p = write(
        dir.path(),
        "chat.csv",
        "messages\n\"[{\"\"role\"\": \"\"user\"\", \"\"content\"\": \"\"U\"\"}, {\"\"role\"\": \"\"assistant\"\", \"\"content\"\": \"\"A\"\"}]\"\n",
    );
    let ds = load(&p, &opts).unwrap();
    assert_eq!(ds.examples[0], chat(&[("user", "U"), ("assistant", "A")]));
}

#[test]
fn malformed_rows_name_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LoadOptions::default();
    let row = r#"{"instruction": "i", "output": "o"}"#;
    let turn_ok = r#"{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}"#;
    #[rustfmt::skip]
    let cases = [
        ("badjson.jsonl", format!("{row}\n{row}\n{{\"instruction\": \"i\",\n"), 3, "(json)"),
        ("nooutput.jsonl", format!("{row}\n{{\"instruction\": \"i\", \"input\": \"x\"}}\n"), 2, "output"),
        ("wrongtype.jsonl", "{\"messages\": \"hello\"}\n".to_string(), 1, "messages"),
        ("badturn.jsonl", format!("{turn_ok}\n{}\n", r#"{"messages": [{"role": "user", "content": 5}]}"#),
            2, "messages[0].content"),
        ("nocolumn.csv", "instruction,input\na,b\n".to_string(), 1, "output"),
        ("empty.jsonl", "\n  \n".to_string(), 1, "(file)"),
        ("array.json", format!("[{row}, 3]"), 2, "(row)"),
        ("unknown.jsonl", "{\"foo\": 1}\n".to_string(), 1, "(row)"),
        ("sharegpt.jsonl", r#"{"conversations": [{"from": "alien", "value": "x"}]}"#.to_string(),
            1, "conversations[0].from"),
        ("noreply.jsonl", r#"{"messages": [{"role": "user", "content": "u"}]}"#.to_string(), 1, "messages"),
    ];
    for (name, text, line, field) in cases {
        let err = load(&write(dir.path(), name, &text), &opts).unwrap_err();
        assert_eq!(err.code(), "BadDataset", "{name}: {err}");
        assert_eq!(data_err(err), (line, field.to_string()), "{name}");
    }
    // A CSV row with too many cells reports the record's own line.
    let p = write(dir.path(), "ragged.csv", "text\n\"a\nb\"\nc,d\n");
    assert_eq!(data_err(load(&p, &opts).unwrap_err()), (4, "(csv)".into()));
}

#[test]
fn skip_bad_rows_counts_and_keeps_first_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text = "{\"text\": \"a\"}\nnot json\n{\"text\": 7}\n{\"text\": \"b\"}\n";
    let p = write(dir.path(), "mixed.jsonl", text);
    assert_eq!(
        data_err(load(&p, &LoadOptions::default()).unwrap_err()),
        (2, "(json)".into())
    );
    let ds = load(
        &p,
        &LoadOptions {
            skip_bad_rows: true,
        },
    )
    .unwrap();
    assert_eq!((ds.examples.len(), ds.skipped), (2, 2));
    assert_eq!(ds.lines, vec![1, 4]);
    let kept: Vec<(usize, &str)> = ds
        .errors
        .iter()
        .map(|e| (e.line, e.field.as_str()))
        .collect();
    assert_eq!(kept, vec![(2, "(json)"), (3, "text")]);
    // Nothing usable is still an error.
    let p = write(dir.path(), "allbad.jsonl", "x\ny\n");
    let err = load(
        &p,
        &LoadOptions {
            skip_bad_rows: true,
        },
    )
    .unwrap_err();
    assert_eq!(data_err(err), (1, "(file)".into()));
}

#[test]
fn chatml_trains_only_assistant_replies_and_im_end() {
    let (tok, tmpl) = smollm2();
    let ex = chat(&[
        ("user", "What is the capital of France?"),
        ("assistant", "Paris is the capital."),
        ("user", "And of Italy?"),
        ("assistant", "Rome, of course."),
    ]);
    let r = Renderer::new(&tok, &tmpl, RenderOptions::default()).unwrap();
    let t = r.tokenize(&ex).unwrap();
    assert_eq!(
        trained_runs(&tok, &t),
        vec![
            "Paris is the capital.<|im_end|>",
            "Rome, of course.<|im_end|>"
        ]
    );
    // The template writes <|im_end|> itself, and ByteLevel adds no BOS: the ids are exactly the
    // rendered text's, with nothing inserted.
    let Example::Chat(msgs) = &ex else {
        unreachable!()
    };
    let text = tmpl.render(msgs, false).unwrap();
    assert_eq!(t.input_ids, tok.encode(&text, false).unwrap());
    assert!(!t.truncated());

    let all = RenderOptions {
        train_on: TrainOn::All,
        ..RenderOptions::default()
    };
    let t = Renderer::new(&tok, &tmpl, all)
        .unwrap()
        .tokenize(&ex)
        .unwrap();
    assert!(t.loss_mask.iter().all(|&m| m == 1));
    assert_eq!(t.input_ids, tok.encode(&text, false).unwrap());
}

#[test]
fn fallback_chat_gets_one_bos_and_trains_reply_with_eos() {
    let (tok, tmpl) = stories();
    let r = Renderer::new(&tok, &tmpl, RenderOptions::default()).unwrap();
    let t = r
        .tokenize(&chat(&[
            ("user", "Tell a story"),
            ("assistant", "Once upon a time"),
        ]))
        .unwrap();
    assert_eq!(t.input_ids.iter().filter(|&&id| id == 1).count(), 1);
    assert_eq!(t.input_ids[0], 1);
    assert_eq!(*t.input_ids.last().unwrap(), 2, "ends with </s>");
    assert_eq!(trained_runs(&tok, &t), vec!["Once upon a time</s>"]);
}

#[test]
fn completion_and_text_masks_get_bos_and_eos() {
    let (tok, tmpl) = stories();
    let r = Renderer::new(&tok, &tmpl, RenderOptions::default()).unwrap();
    let ex = Example::Completion {
        prompt: "Lily saw a cat.".into(),
        completion: " The cat was big.".into(),
    };
    let t = r.tokenize(&ex).unwrap();
    // Post-processor BOS first (untrained), the prompt masked, completion + EOS trained.
    assert_eq!((t.input_ids[0], t.loss_mask[0]), (1, 0));
    assert_eq!(
        (*t.input_ids.last().unwrap(), *t.loss_mask.last().unwrap()),
        (2, 1)
    );
    let runs = trained_runs(&tok, &t);
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].trim_start(), "The cat was big.</s>");
    let prompt_ids = tok.encode("Lily saw a cat.", false).unwrap();
    assert!(t.loss_mask[1..=prompt_ids.len()].iter().all(|&m| m == 0));

    let t = r
        .tokenize(&Example::Text("The sun is hot.".into()))
        .unwrap();
    assert_eq!(t.loss_mask[0], 0);
    assert!(t.loss_mask[1..].iter().all(|&m| m == 1));
    assert_eq!(
        t.input_ids[1..t.input_ids.len() - 1],
        tok.encode("The sun is hot.", false).unwrap()[..]
    );
    assert_eq!(*t.input_ids.last().unwrap(), 2);
}

#[test]
fn end_of_turn_is_inserted_when_the_template_omits_it() {
    let (tok, _) = smollm2();
    // Writes no end-of-turn text at all; end_of_turn() falls back to EOS (<|im_end|>, id 2).
    let src = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}";
    let tmpl = ChatTemplate::new(src, "<|im_start|>", "<|im_end|>").unwrap();
    let r = Renderer::new(&tok, &tmpl, RenderOptions::default()).unwrap();
    let t = r
        .tokenize(&chat(&[
            ("user", "hi"),
            ("assistant", "yo"),
            ("user", "bye"),
            ("assistant", "ok"),
        ]))
        .unwrap();
    // The reply's first token `Ġyo` also holds the space after the colon: it is learned whole.
    assert_eq!(
        trained_runs(&tok, &t),
        vec![" yo<|im_end|>", " ok<|im_end|>"]
    );
    assert_eq!(t.input_ids.iter().filter(|&&id| id == 2).count(), 2);
}

#[test]
fn truncation_is_counted() {
    let (tok, tmpl) = stories();
    let opts = RenderOptions {
        max_len: 8,
        ..RenderOptions::default()
    };
    let r = Renderer::new(&tok, &tmpl, opts).unwrap();
    let t = r
        .tokenize(&Example::Text(
            "Once upon a time there was a little girl named Lily.".into(),
        ))
        .unwrap();
    assert_eq!((t.input_ids.len(), t.loss_mask.len()), (8, 8));
    assert!(t.full_len > 8 && t.truncated());
    let zero = RenderOptions {
        max_len: 0,
        ..RenderOptions::default()
    };
    assert!(matches!(
        Renderer::new(&tok, &tmpl, zero),
        Err(Error::Invalid { .. })
    ));

    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "t.jsonl",
        "{\"text\": \"a b c d e f g h i j k l\"}\n{\"text\": \"hi\"}\n",
    );
    let rep = inspect(&p, &tok, &tmpl, 8, &LoadOptions::default()).unwrap();
    assert_eq!((rep.rows, rep.truncated), (2, 1));
    assert!((rep.truncated_share - 0.5).abs() < 1e-12);
}

#[test]
fn split_and_epoch_order_are_reproducible_and_disjoint() {
    let (train, val) = split(100, 0.1, 42).unwrap();
    assert_eq!((train.len(), val.len()), (90, 10));
    assert_eq!(split(100, 0.1, 42).unwrap(), (train.clone(), val.clone()));
    assert_ne!(split(100, 0.1, 43).unwrap().1, val);
    let mut all: Vec<usize> = train.iter().chain(&val).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..100).collect::<Vec<_>>());
    assert!(split(10, 1.0, 0).is_err() && split(10, -0.1, 0).is_err());
    assert_eq!(split(1, 0.5, 0).unwrap(), (vec![0], vec![]));

    let e0 = epoch_order(50, 7, 0);
    assert_eq!(
        e0,
        epoch_order(50, 7, 0),
        "a pure function of (n, seed, epoch)"
    );
    assert_ne!(e0, epoch_order(50, 7, 1));
    assert_ne!(e0, epoch_order(50, 8, 0));
    let mut sorted = e0.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    assert_eq!(
        batch_indices(&e0, 16)
            .unwrap()
            .iter()
            .map(Vec::len)
            .collect::<Vec<_>>(),
        vec![16, 16, 16, 2]
    );
    assert!(batch_indices(&e0, 0).is_err());
}

#[test]
fn batch_pads_right_and_shifts_targets() {
    let a = TokenizedExample {
        input_ids: vec![1, 10, 11],
        loss_mask: vec![0, 0, 1],
        full_len: 3,
    };
    let b = TokenizedExample {
        input_ids: vec![1, 20, 21, 22, 2],
        loss_mask: vec![0, 0, 1, 1, 1],
        full_len: 5,
    };
    let batch = make_batch(&[&a, &b], 2).unwrap();
    assert_eq!((batch.batch, batch.seq), (2, 5));
    assert_eq!(batch.input_ids, vec![1, 10, 11, 2, 2, 1, 20, 21, 22, 2]);
    assert_eq!(batch.targets, vec![10, 11, 2, 2, 2, 20, 21, 22, 2, 2]);
    assert_eq!(
        batch.loss_mask,
        vec![0., 1., 0., 0., 0., 0., 1., 1., 1., 0.]
    );
    assert_eq!(
        batch.attention_mask,
        vec![1., 1., 1., 0., 0., 1., 1., 1., 1., 1.]
    );
    assert_eq!(batch.trained_positions(), 4);
    assert!(make_batch(&[], 0).is_err());
}

#[test]
fn inspect_shared_datasets_with_fallback_template() {
    let (tok, tmpl) = stories();
    let opts = LoadOptions::default();
    let cases = [
        (
            "data/self-instruct-seed/seed_tasks_alpaca.jsonl",
            DataFormat::Alpaca,
            175,
        ),
        (
            "data/chatterbot-corpus-en/pairs.jsonl",
            DataFormat::QuestionAnswer,
            1229,
        ),
        ("data/gsm8k/train.jsonl", DataFormat::QuestionAnswer, 7473),
    ];
    for (rel, format, rows) in cases {
        let rep = inspect(&shared(rel), &tok, &tmpl, 256, &opts).unwrap();
        assert_eq!(
            (rep.format, rep.rows, rep.skipped),
            (format, rows, 0),
            "{rel}"
        );
        assert!(rep.fallback_template);
        assert_eq!(rep.histogram.iter().map(|b| b.2).sum::<usize>(), rows);
        let l = &rep.lengths;
        assert!(
            l.min <= l.p50 && l.p50 <= l.p95 && l.p95 <= l.max && l.min > 0,
            "{l:?}"
        );
        let over = rep.truncated as f64 / rows as f64;
        assert!((rep.truncated_share - over).abs() < 1e-12);
        assert!(rep.trained_tokens > 0 && rep.trained_tokens < rep.total_tokens);
        // The example shows the reply (and its </s>) as the trained part.
        let trained: String = rep
            .example
            .iter()
            .filter(|s| s.trained)
            .map(|s| s.text.as_str())
            .collect();
        assert!(trained.ends_with("</s>"), "{trained:?}");
        assert!(rep
            .example
            .iter()
            .any(|s| !s.trained && s.text.contains("### Instruction:")));
        serde_json::to_string(&rep).unwrap();
        eprintln!(
            "{rel}: {:?} truncated {} histogram {:?}",
            rep.lengths, rep.truncated, rep.histogram
        );
    }
}
