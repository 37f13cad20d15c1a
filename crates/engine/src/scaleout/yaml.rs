//! A small YAML writer for the engine configs: ordered keys, a comment above any key, block
//! style for maps and lists of maps, flow style for lists of scalars.
//!
//! It writes a safe subset that PyYAML (Axolotl, TRL) and OmegaConf (LLaMA-Factory) read the
//! same way: every string is double-quoted with JSON escapes (valid YAML escapes), and every
//! float has a decimal point and no exponent, because PyYAML's YAML 1.1 resolver reads `2e-4`
//! as the *string* "2e-4", which TRL would then pass on unconverted. It does not parse YAML.

/// A YAML value.
#[derive(Clone, Debug, PartialEq)]
pub enum Y {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Y>),
    Map(Vec<(String, Y)>),
}

impl Y {
    pub fn str(s: impl Into<String>) -> Y {
        Y::Str(s.into())
    }

    pub fn strs<S: AsRef<str>>(items: &[S]) -> Y {
        Y::List(items.iter().map(|s| Y::str(s.as_ref())).collect())
    }

    /// An integer when `v` is one (what integer-typed engine fields need), else a float.
    pub fn number(v: f64) -> Y {
        if v.fract() == 0.0 && v.abs() < 1e15 {
            Y::Int(v as i64)
        } else {
            Y::Float(v)
        }
    }

    pub fn map(items: Vec<(&str, Y)>) -> Y {
        Y::Map(items.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    /// The value as a plain string for reports (`2e-4` shows as `0.0002`).
    pub fn display(&self) -> String {
        match self {
            Y::Str(s) => s.clone(),
            other => {
                let mut out = String::new();
                write_flow(&mut out, other);
                out
            }
        }
    }
}

/// A YAML document: keys in order, each with an optional comment written above it.
#[derive(Clone, Debug, Default)]
pub struct Doc {
    items: Vec<Item>,
}

#[derive(Clone, Debug)]
enum Item {
    Comment(String),
    Blank,
    Key(String, Y),
}

impl Doc {
    pub fn new() -> Self {
        Self::default()
    }

    /// A `# ...` line (one per line of `text`).
    pub fn comment(&mut self, text: &str) -> &mut Self {
        for line in text.lines() {
            self.items.push(Item::Comment(line.to_string()));
        }
        self
    }

    pub fn blank(&mut self) -> &mut Self {
        self.items.push(Item::Blank);
        self
    }

    pub fn set(&mut self, key: &str, value: Y) -> &mut Self {
        self.items.push(Item::Key(key.to_string(), value));
        self
    }

    /// The value of a top-level key, if set.
    pub fn get(&self, key: &str) -> Option<&Y> {
        self.items.iter().find_map(|i| match i {
            Item::Key(k, v) if k == key => Some(v),
            _ => None,
        })
    }

    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        for item in &self.items {
            match item {
                Item::Comment(c) if c.is_empty() => out.push_str("#\n"),
                Item::Comment(c) => {
                    out.push_str("# ");
                    out.push_str(c);
                    out.push('\n');
                }
                Item::Blank => out.push('\n'),
                Item::Key(k, v) => write_entry(&mut out, 0, k, v),
            }
        }
        out
    }
}

fn is_scalar(v: &Y) -> bool {
    !matches!(v, Y::Map(m) if !m.is_empty())
        && !matches!(v, Y::List(l) if l.iter().any(|x| matches!(x, Y::Map(_) | Y::List(_))))
}

fn write_entry(out: &mut String, indent: usize, key: &str, v: &Y) {
    let pad = " ".repeat(indent);
    if is_scalar(v) {
        out.push_str(&format!("{pad}{key}: "));
        write_flow(out, v);
        out.push('\n');
        return;
    }
    out.push_str(&format!("{pad}{key}:\n"));
    write_block(out, indent + 2, v);
}

/// A non-scalar value in block style at `indent`.
fn write_block(out: &mut String, indent: usize, v: &Y) {
    let pad = " ".repeat(indent);
    match v {
        Y::Map(m) => {
            for (k, x) in m {
                write_entry(out, indent, k, x);
            }
        }
        Y::List(items) => {
            for x in items {
                match x {
                    Y::Map(m) if !m.is_empty() => {
                        // `- first: v` then the other keys aligned under `first`.
                        let mut first = true;
                        for (k, y) in m {
                            let mut line = String::new();
                            write_entry(&mut line, indent + 2, k, y);
                            if first {
                                out.push_str(&format!("{pad}- {}", &line[indent + 2..]));
                                first = false;
                            } else {
                                out.push_str(&line);
                            }
                        }
                    }
                    Y::List(_) => {
                        out.push_str(&format!("{pad}-\n"));
                        write_block(out, indent + 2, x);
                    }
                    scalar => {
                        out.push_str(&format!("{pad}- "));
                        write_flow(out, scalar);
                        out.push('\n');
                    }
                }
            }
        }
        scalar => {
            out.push_str(&pad);
            write_flow(out, scalar);
            out.push('\n');
        }
    }
}

/// Flow style: `[a, b]`, `{k: v}`, quoted strings, floats with a decimal point.
fn write_flow(out: &mut String, v: &Y) {
    match v {
        Y::Null => out.push_str("null"),
        Y::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Y::Int(i) => out.push_str(&i.to_string()),
        Y::Float(f) => out.push_str(&float(*f)),
        Y::Str(s) => out.push_str(&serde_json::to_string(s).expect("strings serialise")),
        Y::List(items) => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_flow(out, x);
            }
            out.push(']');
        }
        Y::Map(m) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(k);
                out.push_str(": ");
                write_flow(out, x);
            }
            out.push('}');
        }
    }
}

/// Rust's `Display` for f64 never uses an exponent and round-trips; add `.0` to integral values
/// so the YAML type stays float.
fn float(f: f64) -> String {
    if !f.is_finite() {
        return if f.is_nan() {
            ".nan".into()
        } else if f > 0.0 {
            ".inf".into()
        } else {
            "-.inf".into()
        };
    }
    let s = format!("{f}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_safe_subset() {
        let mut d = Doc::new();
        d.comment("head")
            .set("lr", Y::Float(2e-4))
            .set("eps", Y::Float(1e-8));
        d.set("n", Y::Int(3)).set("one", Y::Float(1.0));
        d.set("s", Y::str("a \"q\"\nb"))
            .set("l", Y::strs(&["x", "y"]));
        d.set(
            "ds",
            Y::List(vec![Y::map(vec![
                ("path", Y::str("p")),
                ("roles", Y::strs(&["assistant"])),
            ])]),
        );
        d.set("kw", Y::map(vec![("min_lr_rate", Y::Float(0.1))]));
        let y = d.to_yaml();
        let want = "# head\nlr: 0.0002\neps: 0.00000001\nn: 3\none: 1.0\n\
                    s: \"a \\\"q\\\"\\nb\"\nl: [\"x\", \"y\"]\n\
                    ds:\n  - path: \"p\"\n    roles: [\"assistant\"]\n\
                    kw:\n  min_lr_rate: 0.1\n";
        assert_eq!(y, want);
        assert_eq!(d.get("n"), Some(&Y::Int(3)));
        assert_eq!(Y::number(16.0), Y::Int(16));
        assert_eq!(Y::number(12.5), Y::Float(12.5));
    }
}
