//! The fuzz harness: a seeded generator, a bounded number of cases per family, and a tally
//! that fails the test on any panic or on an error that does not say where the fault is.
//!
//! Case counts: each family has a default sized for `cargo test` (the whole suite well under a
//! minute on 2 cores); `PEFT_FUZZ_CASES=N` runs N cases per family instead (`make fuzz`), and
//! `PEFT_FUZZ_SEED=S` changes the seed. `PEFT_FUZZ_REPORT=FILE` appends one line per family
//! (the numbers RELIABILITY.md quotes).

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;
use std::time::Instant;

/// A small seeded generator (SplitMix64) with helpers for hostile values.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// True with probability `1/n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    /// A size a hostile or broken file might declare.
    pub fn size(&mut self) -> u64 {
        match self.below(12) {
            0 => 0,
            1 => 1,
            2 => u64::MAX,
            3 => 1 << 60,
            4 => (1 << 32) + self.below(3) as u64,
            5 => u32::MAX as u64,
            6 => (1 << 24) + 1,
            7 => i64::MAX as u64,
            8 => 3,
            9 => self.next() >> self.below(64),
            _ => self.below(300) as u64,
        }
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// Text with ASCII, accents, CJK, emoji, control characters and quotes.
    pub fn text(&mut self, max: usize) -> String {
        const PIECES: &[&str] = &[
            "a",
            "b",
            " ",
            "Hello",
            "\n",
            "\t",
            "\"",
            "\\",
            "{",
            "}",
            "é",
            "中",
            "😀",
            "\u{0}",
            "\u{202e}",
            "<|im_end|>",
            "<s>",
            "</s>",
            "{{",
            "{%",
            "'",
            ",",
            "\r\n",
            "\u{feff}",
        ];
        let n = self.below(max + 1);
        (0..n).map(|_| *self.pick(PIECES)).collect()
    }
}

thread_local! {
    static PANICKED: Cell<usize> = const { Cell::new(0) };
}

/// Counts panics on this thread (caught or not), then lets the default hook print them.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The engine's own hook (quiet for the panics it contains) goes in first, so this one
        // wraps it and sees every panic.
        let _ = peft_engine::tokenizer::contained_panics();
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.with(|p| p.set(p.get() + 1));
            prev(info);
        }));
    });
}

/// How one case ended.
pub enum Verdict {
    Ok,
    /// An error; `named` says whether it names the file (and field/line where there is one).
    Err {
        message: String,
        named: bool,
    },
}

impl Verdict {
    /// An engine result, whose error must contain one of `needles` (file name, field).
    pub fn of<T>(r: peft_engine::Result<T>, needles: &[&str]) -> Verdict {
        match r {
            Ok(_) => Verdict::Ok,
            Err(e) => {
                let message = e.to_string();
                let named = needles.iter().any(|n| message.contains(n));
                Verdict::Err { message, named }
            }
        }
    }
}

/// Cases per family: `PEFT_FUZZ_CASES` or the default.
pub fn cases(default: usize) -> usize {
    std::env::var("PEFT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seed of family `name`: `PEFT_FUZZ_SEED` (or a fixed one) mixed with the name.
pub fn seed(name: &str) -> u64 {
    let base: u64 = std::env::var("PEFT_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5EED_F00D);
    name.bytes().fold(base, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    })
}

/// Runs `n` cases of family `name`; `case(rng, i)` builds one input, uses it and says how
/// it ended. Fails on any panic (counted by a hook, so one caught inside the engine counts
/// too) and on any error that does not name the file/field.
pub fn run(name: &str, default_cases: usize, mut case: impl FnMut(&mut Rng, usize) -> Verdict) {
    install_hook();
    let n = cases(default_cases);
    let mut rng = Rng::new(seed(name));
    let (mut ok, mut err, mut panics, mut unclear, mut contained) = (0, 0, 0, 0, 0);
    let mut examples: Vec<String> = Vec::new();
    let mut contained_examples: Vec<String> = Vec::new();
    let mut slowest = (0u128, 0usize);
    for i in 0..n {
        let before = PANICKED.with(Cell::get);
        let contained_before = peft_engine::tokenizer::contained_panics();
        let t = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| case(&mut rng, i)));
        let ms = t.elapsed().as_millis();
        if ms > slowest.0 {
            slowest = (ms, i);
        }
        // A panic inside the tokenizers crate that the engine's guard turned into an error
        // (its message is not printed) is counted apart and listed in RELIABILITY.md.
        let caught = peft_engine::tokenizer::contained_panics() - contained_before;
        contained += caught;
        let panicked = PANICKED.with(Cell::get) - before > caught;
        match r {
            _ if panicked => {
                panics += 1;
                examples.push(format!("case {i}: panicked"));
            }
            Err(_) => {
                panics += 1;
                examples.push(format!("case {i}: panicked"));
            }
            Ok(Verdict::Ok) => ok += 1,
            Ok(Verdict::Err {
                named: true,
                message,
            }) => {
                err += 1;
                if caught > 0 && contained_examples.len() < 5 {
                    contained_examples.push(format!("case {i}: {message}"));
                }
            }
            Ok(Verdict::Err { message, .. }) => {
                unclear += 1;
                examples.push(format!("case {i}: error without file/field: {message}"));
            }
        }
    }
    let line = format!(
        "fuzz {name}: {n} cases, {ok} ok, {err} clear errors, {panics} panics, {unclear} unclear \
         errors, {contained} third-party panics contained as errors, slowest case {} ({} ms)",
        slowest.1, slowest.0
    );
    eprintln!("{line}");
    for e in &contained_examples {
        eprintln!("  contained: {e}");
    }
    if let Ok(path) = std::env::var("PEFT_FUZZ_REPORT") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
    assert!(
        panics == 0 && unclear == 0,
        "{line}\n{}",
        examples
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
