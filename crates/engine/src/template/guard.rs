//! Bounds on what a chat template may do. A template is a program shipped inside a model file
//! from anywhere; rendering it must end, quickly, with text or a clear error:
//! - instructions per rendering are limited (minijinja fuel, [`TEMPLATE_FUEL`]), so nested
//!   loops stop with "out of fuel" instead of hanging generate/inspect/train;
//! - macro recursion is limited ([`TEMPLATE_RECURSION`]);
//! - output is limited ([`TEMPLATE_OUTPUT_BYTES`]) by the writer it is rendered into;
//! - wall time is limited ([`TEMPLATE_SECONDS`]) where loops get their numbers: `range()`
//!   stops yielding past the deadline, and the rendering then fails (fuel counts instructions,
//!   not the bytes one instruction may copy);
//! - filters and string methods whose numeric argument sets how much they allocate (`indent`,
//!   `slice`, `batch`, printf/`str.format` widths, `str.replace` growth) check it first.
//!
//! - strings built by operators (`~`, `+`, `*`) pay fuel for their bytes, and sequences built by
//!   `+` or `*` are limited in length: minijinja has no hook on its operators, so this part is a
//!   patch of the vendored crate (`vendor/minijinja/PATCHES.md`); `{% set s = s ~ s %}` in a
//!   loop then ends "out of fuel" instead of exhausting memory;
//! - filters that turn a whole value into one string (`join`, `string`, `pprint`) measure it
//!   first, so a lazily repeated list (`[s] * n`) is refused, not built; the engine's own
//!   `tojson` stops once its output passes the output bound.

use crate::limits::{TEMPLATE_FUEL, TEMPLATE_OUTPUT_BYTES, TEMPLATE_RECURSION, TEMPLATE_SECONDS};
use minijinja::value::{Kwargs, Rest, StringInput, Value};
use minijinja::{Environment, Error, ErrorKind, State};
use std::cell::Cell;
use std::time::{Duration, Instant};

thread_local! {
    /// When the rendering running on this thread must stop, and whether it ran past it.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    static EXPIRED: Cell<bool> = const { Cell::new(false) };
}

fn past_deadline() -> bool {
    let late = DEADLINE.with(|d| d.get().is_some_and(|t| Instant::now() > t));
    if late {
        EXPIRED.with(|e| e.set(true));
    }
    late
}

/// Runs one rendering under the wall-time limit; `true` when it ran past it (its loops were cut
/// short, so its output must not be used).
pub(super) fn with_deadline<T>(f: impl FnOnce() -> T) -> (T, bool) {
    let limit = Instant::now() + Duration::from_secs(TEMPLATE_SECONDS);
    DEADLINE.with(|d| d.set(Some(limit)));
    EXPIRED.with(|e| e.set(false));
    let out = f();
    DEADLINE.with(|d| d.set(None));
    (out, EXPIRED.with(|e| e.replace(false)))
}

/// minijinja's `range` (at most 100000 items), yielding nothing more once the deadline passed.
fn range(lower: isize, upper: Option<isize>, step: Option<isize>) -> Result<Value, Error> {
    let items: Vec<Value> = minijinja::functions::range(lower, upper, step)?
        .try_iter()?
        .collect();
    Ok(Value::make_iterable(move || {
        items.clone().into_iter().take_while(|_| !past_deadline())
    }))
}

/// Installs the limits on a template environment.
pub(super) fn harden(env: &mut Environment<'static>) {
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_recursion_limit(TEMPLATE_RECURSION);
    env.add_function("range", range);
    env.add_filter("indent", indent);
    env.add_filter("slice", slice);
    env.add_filter("batch", batch);
    env.add_filter("format", format);
    env.add_filter("join", join);
    env.add_filter("string", string);
    env.add_filter("pprint", pprint);
    env.set_unknown_method_callback(methods);
}

fn too_large(what: &str, n: usize) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!(
            "{what} {n} would build more than {} MiB; templates are limited",
            TEMPLATE_OUTPUT_BYTES >> 20
        ),
    )
}

/// `n` copies of `unit` bytes must stay within the output bound.
fn bounded(what: &str, n: usize, unit: usize) -> Result<(), Error> {
    match n.checked_mul(unit.max(1)) {
        Some(b) if b <= TEMPLATE_OUTPUT_BYTES => Ok(()),
        _ => Err(too_large(what, n)),
    }
}

fn indent(
    value: StringInput<'_>,
    width: Option<usize>,
    first: Option<bool>,
    blank: Option<bool>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let w = match width {
        Some(w) => w,
        None => kwargs.get::<Option<usize>>("width")?.unwrap_or(4),
    };
    let lines = value.as_str().matches('\n').count() + 1;
    bounded("indent width", w, lines)?;
    minijinja::filters::indent(value, width, first, blank, kwargs)
}

fn slice(state: &State, value: Value, count: usize, fill: Option<Value>) -> Result<Value, Error> {
    // One (possibly empty) list per slice: the count is what gets allocated.
    bounded("slice count", count, std::mem::size_of::<Value>())?;
    minijinja::filters::slice(state, value, count, fill)
}

fn batch(state: &State, value: Value, count: usize, fill: Option<Value>) -> Result<Value, Error> {
    bounded("batch size", count, std::mem::size_of::<Value>())?;
    minijinja::filters::batch(state, value, count, fill)
}

/// Counts bytes written, failing past the output bound.
struct Measure(usize);

impl std::fmt::Write for Measure {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0 += s.len();
        if self.0 > TEMPLATE_OUTPUT_BYTES {
            return Err(std::fmt::Error);
        }
        Ok(())
    }
}

/// Fails when the text `write` makes would exceed the output bound, before anything is built.
fn measured(what: &str, write: impl FnOnce(&mut Measure) -> std::fmt::Result) -> Result<(), Error> {
    let mut m = Measure(0);
    write(&mut m).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "{what} would build more than {} MiB; templates are limited",
                TEMPLATE_OUTPUT_BYTES >> 20
            ),
        )
    })
}

fn join(state: &State, value: &Value, joiner: Option<StringInput<'_>>) -> Result<Value, Error> {
    use std::fmt::Write;
    let sep = joiner.as_ref().map(|j| j.as_str()).unwrap_or("");
    if let Some(s) = value.as_str() {
        // A string joins its characters.
        bounded("join of", s.chars().count(), sep.len() + 4)?;
    } else if !value.is_undefined() && !value.is_none() {
        if let Ok(items) = value.try_iter() {
            measured("join", |m| {
                for (i, item) in items.enumerate() {
                    if i > 0 {
                        m.write_str(sep)?;
                    }
                    write!(m, "{item}")?;
                }
                Ok(())
            })?;
        }
    }
    minijinja::filters::join(state, value, joiner)
}

fn string(state: &State, value: &Value) -> Result<Value, Error> {
    use std::fmt::Write;
    measured("string", |m| write!(m, "{value}"))?;
    minijinja::filters::string(state, value)
}

fn pprint(value: &Value) -> Result<String, Error> {
    use std::fmt::Write;
    measured("pprint", |m| write!(m, "{value:#?}"))?;
    Ok(minijinja::filters::pprint(value))
}

/// Refuses a printf or `str.format` spec whose width or precision has more than 7 digits.
fn check_widths(spec: &str) -> Result<(), Error> {
    let mut run = 0usize;
    for c in spec.chars() {
        run = if c.is_ascii_digit() { run + 1 } else { 0 };
        if run > 7 {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "a format width or precision over 9999999 is not allowed in templates",
            ));
        }
    }
    Ok(())
}

fn format(state: &State, spec: &Value, args: Rest<Value>) -> Result<Value, Error> {
    if let Some(s) = spec.as_str() {
        check_widths(s)?;
    }
    minijinja::filters::format(state, spec, args)
}

/// Python string/list/dict methods (minijinja-contrib's pycompat) with size checks.
fn methods(state: &State, value: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    if let Some(s) = value.as_str() {
        match method {
            "format" => check_widths(s)?,
            "replace" => {
                // Growth per match is len(new) - len(old); a count limits the matches.
                let old = args.first().and_then(|v| v.as_str()).unwrap_or("");
                let new = args.get(1).and_then(|v| v.as_str()).unwrap_or("");
                let matches = if old.is_empty() {
                    s.chars().count() + 1
                } else {
                    s.matches(old).count()
                };
                let grown = matches.saturating_mul(new.len()).saturating_add(s.len());
                if grown > TEMPLATE_OUTPUT_BYTES {
                    return Err(too_large("str.replace result of", grown));
                }
            }
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// A writer that refuses more than [`TEMPLATE_OUTPUT_BYTES`].
pub(super) struct Limited(pub Vec<u8>);

impl std::io::Write for Limited {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > TEMPLATE_OUTPUT_BYTES {
            return Err(std::io::Error::other(format!(
                "the rendered text exceeds {} MiB",
                TEMPLATE_OUTPUT_BYTES >> 20
            )));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Refuses a template that stores a namespace inside a namespace (`{% set ns.me = ns %}`,
/// also through an alias or a loop variable): minijinja lets namespaces form a cycle, and
/// printing one recurses until the stack overflows, which aborts the process. A textual check
/// of `{% set %}` and `{% for %}` statements: namespaces are the variables set from
/// `namespace(...)`, and everything set or looped from an expression that names one bare (not
/// as `ns.attr` or `ns[...]`). Not caught: a namespace passed through a macro argument.
pub(super) fn refuse_namespace_cycles(source: &str) -> Result<(), String> {
    let stmts: Vec<&str> = source
        .split("{%")
        .skip(1)
        .filter_map(|s| s.split_once("%}").map(|(body, _)| body))
        .map(|s| s.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace()))
        .collect();
    let mut spaces: Vec<String> = Vec::new();
    loop {
        let before = spaces.len();
        for s in &stmts {
            if let Some((target, rhs)) = s.strip_prefix("set ").and_then(|r| r.split_once('=')) {
                let (target, rhs) = (target.trim(), rhs.trim());
                let names_space =
                    rhs.starts_with("namespace(") || bare_names(rhs).any(|n| spaces.contains(&n));
                if is_ident(target) && names_space && !spaces.iter().any(|n| n == target) {
                    spaces.push(target.to_string());
                }
            } else if let Some((targets, iter)) =
                s.strip_prefix("for ").and_then(|r| r.split_once(" in "))
            {
                if bare_names(iter).any(|n| spaces.contains(&n)) {
                    for t in targets.split(',').map(str::trim).filter(|t| is_ident(t)) {
                        if !spaces.iter().any(|n| n == t) {
                            spaces.push(t.to_string());
                        }
                    }
                }
            }
        }
        if spaces.len() == before {
            break;
        }
    }
    for s in &stmts {
        if let Some((target, rhs)) = s.strip_prefix("set ").and_then(|r| r.split_once('=')) {
            if target.trim().contains('.') && bare_names(rhs).any(|n| spaces.contains(&n)) {
                return Err(format!(
                    "`{{% {s} %}}` stores a namespace inside a namespace, a cycle that cannot be \
                     printed; templates may not do that"
                ));
            }
        }
    }
    Ok(())
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// Identifiers in an expression used as values themselves: not inside string literals, not
/// attribute names (`.x`), and not followed by `.` or `[` (an attribute or item of them).
fn bare_names(expr: &str) -> impl Iterator<Item = String> + '_ {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\'' || c == b'"' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let prev = expr[..start].trim_end().chars().last();
            let next = expr[i..].trim_start().chars().next();
            if prev != Some('.') && !matches!(next, Some('.' | '[')) {
                out.push(expr[start..i].to_string());
            }
        } else {
            i += 1;
        }
    }
    out.into_iter()
}
