//! Chat templates: random Jinja programs built from the constructs real templates use
//! (loops, conditions, macros, filters, Python string methods, `raise_exception`, namespaces)
//! with extreme arguments, plus truncated (unparseable) ones, rendered over random messages;
//! and a fixed list of hostile templates that must end with a clear error.
//!
//! Values that feed themselves (`set ns.v = ns.v ~ ns.v`, lists doubled by `+`) are generated
//! too: their growth is bounded by fuel charged per byte and a length limit on sequences (the
//! vendored minijinja's patch, see `template::guard`).

use crate::harness::{run, Rng, Verdict};
use peft_engine::template::{ChatTemplate, Message};
use std::time::Instant;

fn num(rng: &mut Rng) -> String {
    match rng.below(6) {
        0 => "1099511627776".into(),
        1 => "-3".into(),
        2 => "100000".into(),
        3 => "0".into(),
        _ => rng.below(5).to_string(),
    }
}

fn expr(rng: &mut Rng, depth: usize) -> String {
    if depth == 0 {
        return rng
            .pick(&[
                "'x'",
                "message.content",
                "message['role']",
                "messages|length",
                "bos_token",
                "eos_token",
                "loop.index",
                "undefined_name",
                "none",
                "[1, 2]",
                "{'a': 1}",
                "add_generation_prompt",
                "ns.v",
                "42",
            ])
            .to_string();
    }
    let e = expr(rng, depth - 1);
    let n = num(rng);
    match rng.below(16) {
        0 => format!("{e}|indent({n})"),
        1 => format!("{e}|slice({n})|list"),
        2 => format!("{e}|batch({n})|list"),
        3 => format!("{e}|tojson(indent={n})"),
        4 => format!("'%{n}d'|format(1)"),
        5 => format!("'{{:>{n}}}'.format({e})"),
        6 => format!("({e}|string).replace('', 'ab')"),
        7 => format!("'ab' * {n}"),
        8 => format!("range({n})|list|length"),
        9 => format!("{e}|join(',')"),
        10 => format!("({e}|string).split('a')"),
        11 => format!("{e} ~ 'y'"),
        12 => format!("{e}|truncate({n})"),
        13 => format!("({e}|string).strip().upper()"),
        14 => format!("{e}|unknown_filter"),
        _ => format!("{e} + {e}"),
    }
}

fn stmts(rng: &mut Rng, depth: usize) -> String {
    let mut out = String::new();
    for _ in 0..1 + rng.below(3) {
        let s = match rng.below(if depth == 0 { 4 } else { 11 }) {
            0 => "<|im_start|>".to_string(),
            1 => {
                let d = rng.below(3);
                format!("{{{{ {} }}}}", expr(rng, d))
            }
            2 => format!("{{% set v = {} %}}", expr(rng, 1)),
            3 => "{% set ns.v = 'n' %}".to_string(),
            4 => format!(
                "{{% for message in {} %}}{}{{% endfor %}}",
                rng.pick(&["messages", "range(100000)", "messages * 3", "'abc'", "ns"]),
                stmts(rng, depth - 1)
            ),
            5 => format!(
                "{{% if {} %}}{}{{% else %}}{}{{% endif %}}",
                expr(rng, 1),
                stmts(rng, depth - 1),
                stmts(rng, depth - 1)
            ),
            6 => format!(
                "{{% macro m(n) %}}{{% if n > 0 %}}{{{{ m(n - 1) }}}}{}{{% endif %}}{{% endmacro %}}{{{{ m({}) }}}}",
                stmts(rng, depth - 1),
                num(rng)
            ),
            7 => format!("{{{{ raise_exception('bad ' ~ {}) }}}}", expr(rng, 0)),
            8 => format!("{{% set ns.v = ns.v ~ ns.v ~ {} %}}", expr(rng, 0)),
            9 => format!("{{% set ns.l = ns.l + ns.l + [{}] %}}", expr(rng, 0)),
            _ => format!(
                "{{% for a in range({}) %}}{{% for b in range({}) %}}{}{{% endfor %}}{{% endfor %}}",
                num(rng),
                num(rng),
                stmts(rng, depth - 1)
            ),
        };
        out.push_str(&s);
    }
    out
}

fn messages(rng: &mut Rng) -> Vec<Message> {
    (0..rng.below(6))
        .map(|_| {
            let role = *rng.pick(&["user", "assistant", "system", "tool", "", "ASSISTANT"]);
            Message::new(role, rng.text(20))
        })
        .collect()
}

#[test]
fn chat_templates() {
    run("chat template", 300, |rng, _| {
        let mut src = format!("{{% set ns = namespace(v='', l=[]) %}}{}", stmts(rng, 3));
        if rng.one_in(8) {
            src.truncate(rng.below(src.len()));
        }
        let r = ChatTemplate::new(&src, "<s>", "</s>")
            .and_then(|t| t.render(&messages(rng), rng.one_in(2)));
        Verdict::of(r, &["chat template"])
    });
}

/// Renders each template over one message and checks that it fails naming the chat template
/// and one of the `|`-separated needles.
fn expect_clear_errors(cases: &[(&str, &str)]) {
    let msgs = [Message::new("user", "hi")];
    for (src, needle) in cases {
        let t = Instant::now();
        let r = ChatTemplate::new(src, "<s>", "</s>").and_then(|t| t.render(&msgs, true));
        let e = r.expect_err(src).to_string();
        assert!(e.contains("chat template"), "{src}: {e}");
        assert!(
            needle.split('|').any(|n| e.contains(n)),
            "{src}: expected `{needle}` in: {e}"
        );
        eprintln!("{:>6} ms  {src}  →  {e}", t.elapsed().as_millis());
    }
}

#[test]
fn endless_loops_stop_on_fuel() {
    // 10^10 iterations.
    expect_clear_errors(&[(
        "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
        "fuel|longer than",
    )]);
}

#[test]
fn loops_of_costly_steps_stop_at_the_deadline() {
    // 100 MB built per iteration: fuel counts instructions, not bytes; the deadline stops it.
    expect_clear_errors(&[(
        "{% for a in range(100000) %}{{ ('x' * 100000000)|length }}{% endfor %}",
        "longer than",
    )]);
}

#[test]
fn values_that_feed_themselves_stop_with_a_clear_error() {
    let doubled = "{% set s = s ~ s %}".repeat(48);
    let sequential = format!("{{% set s = 'ab' %}}{doubled}{{{{ s|length }}}}");
    expect_clear_errors(&[
        // 2^64 bytes by `~` in a loop, in 64 steps.
        (
            "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
            "fuel",
        ),
        // The same without a loop: 48 statements, 2^49 bytes.
        (&sequential, "fuel"),
        (
            "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
            "fuel",
        ),
        (
            "{% macro m(s, n) %}{% if n > 0 %}{{ m(s ~ s, n - 1) }}{% endif %}{% endmacro %}{{ m('ab', 60) }}",
            "fuel|recursion",
        ),
        // Lazy sequences: doubled by `+`, repeated by `*`.
        (
            "{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|length }}",
            "too long",
        ),
        ("{{ ([messages] * 1099511627776)|length }}", "too long"),
        // A repeated list printed into one string: 1000 x 10 MB.
        ("{% set s = 'x' * 10000000 %}{{ ([s] * 1000) ~ '' }}", "fuel"),
        ("{{ (['x' * 10000000] * 1000)|join }}", "join"),
        ("{{ (['x' * 10000000] * 1000)|string }}", "string"),
        ("{{ (['x' * 10000000] * 1000)|tojson }}", "tojson"),
        ("{{ (['x' * 10000000] * 1000)|pprint }}", "pprint"),
        ("{{ ('x' * 10000000)|join(' ' * 100) }}", "join"),
    ]);
}

#[test]
fn hostile_templates_end_with_a_clear_error() {
    expect_clear_errors(&[
        ("{{ 'a\nb'|indent(1099511627776) }}", "indent"),
        ("{{ messages|slice(1099511627776)|list }}", "slice"),
        ("{{ messages|batch(1099511627776)|list }}", "batch"),
        ("{{ '%99999999999d'|format(1) }}", "width"),
        ("{{ '{:>99999999999}'.format(1) }}", "width"),
        ("{{ ('x' * 1000).replace('x', 'y' * 1000000) }}", "limited"),
        ("{{ messages|tojson(indent=1099511627776) }}", "indent"),
        // Output: 100 x 1 MB.
        (
            "{% for i in range(100) %}{{ 'x' * 1000000 }}{% endfor %}",
            "exceeds",
        ),
        (
            "{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}",
            "recursion",
        ),
        // A namespace holding itself: printing it would recurse until the stack overflows.
        (
            "{% set ns = namespace(a=1) %}{% set ns.b = ns %}{{ ns|tojson }}",
            "namespace",
        ),
        (
            "{% set ns = namespace(a=1) %}{% set ns.b = ns %}{{ ns }}",
            "namespace",
        ),
        (
            "{% set ns = namespace() %}{% set x = ns %}{% set ns.b = [x] %}{{ ns }}",
            "namespace",
        ),
        (
            "{% set ns = namespace() %}{% for x in [ns] %}{% set ns.b = x %}{% endfor %}",
            "namespace",
        ),
    ]);
}
