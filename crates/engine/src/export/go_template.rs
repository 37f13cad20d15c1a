//! A small renderer for the subset of Go's `text/template` that our Ollama `TEMPLATE`s use, so
//! that an export can prove its template renders exactly what the model's Jinja template renders
//! (`export::ollama_template`) without running Ollama.
//!
//! Supported: text with `{{- … -}}` whitespace trimming; `{{ pipeline }}` output;
//! `if`/`else if`/`else`/`end`; `range $i, $m := pipeline` and `range pipeline`; variable
//! declaration `$x := …` and assignment `$x = …`; operands `.`, `.Field`, `$`, `$.Field`,
//! `$x`, `$x.Field`, string (with `\n`, `\t`, `\"`, `\\` escapes) and integer literals,
//! parenthesised pipelines; the functions `eq` (several right-hand sides), `ne`, `lt`, `gt`,
//! `and`, `or`, `not`, `len`, `slice`, `index`. Truthiness is Go's (false, 0, "", empty list
//! and nil are false). Not supported: pipes (`|`), `with`, `define`/`template`, method calls,
//! comments, printf. Anything else is an error, never a silent difference.

use std::collections::BTreeMap;

/// A value the template sees.
#[derive(Clone, Debug, PartialEq)]
pub enum GoValue {
    Nil,
    Bool(bool),
    Int(i64),
    Str(String),
    List(Vec<GoValue>),
    Map(BTreeMap<String, GoValue>),
}

impl GoValue {
    fn truthy(&self) -> bool {
        match self {
            GoValue::Nil => false,
            GoValue::Bool(b) => *b,
            GoValue::Int(i) => *i != 0,
            GoValue::Str(s) => !s.is_empty(),
            GoValue::List(l) => !l.is_empty(),
            GoValue::Map(m) => !m.is_empty(),
        }
    }

    fn print(&self) -> String {
        match self {
            GoValue::Nil => "<no value>".into(),
            GoValue::Bool(b) => b.to_string(),
            GoValue::Int(i) => i.to_string(),
            GoValue::Str(s) => s.clone(),
            other => format!("{other:?}"),
        }
    }

    fn field(&self, name: &str) -> GoValue {
        match self {
            GoValue::Map(m) => m.get(name).cloned().unwrap_or(GoValue::Nil),
            _ => GoValue::Nil,
        }
    }
}

type R<T> = std::result::Result<T, String>;

#[derive(Debug)]
enum Node {
    Text(String),
    Output(String),
    Set(String, String, bool),
    If(Vec<(String, Vec<Node>)>, Vec<Node>),
    Range(Option<String>, Option<String>, String, Vec<Node>),
}

/// Splits the source into text and action bodies, applying the trim markers.
fn lex(src: &str) -> R<Vec<(bool, String)>> {
    let mut out: Vec<(bool, String)> = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = rest[..start].to_string();
        if trim_next {
            text = text.trim_start().to_string();
        }
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or("unclosed {{")?;
        let mut body = &after[..end];
        if body.starts_with("- ") || body == "-" {
            text = text.trim_end().to_string();
            body = &body[1..];
        }
        trim_next = body.ends_with(" -");
        if trim_next {
            body = &body[..body.len() - 2];
        }
        out.push((false, text));
        out.push((true, body.trim().to_string()));
        rest = &after[end + 2..];
    }
    let text = if trim_next { rest.trim_start() } else { rest };
    out.push((false, text.to_string()));
    Ok(out)
}

fn parse(tokens: &[(bool, String)], pos: &mut usize, stop: &[&str]) -> R<(Vec<Node>, String)> {
    let mut nodes = Vec::new();
    while *pos < tokens.len() {
        let (action, s) = &tokens[*pos];
        *pos += 1;
        if !action {
            if !s.is_empty() {
                nodes.push(Node::Text(s.clone()));
            }
            continue;
        }
        let word = s.split_whitespace().next().unwrap_or_default();
        if stop.contains(&word) {
            return Ok((nodes, s.clone()));
        }
        if let Some(cond) = s.strip_prefix("if ") {
            let mut branches = Vec::new();
            let mut cond = cond.trim().to_string();
            let mut otherwise = Vec::new();
            loop {
                let (body, end) = parse(tokens, pos, &["else", "end"])?;
                branches.push((cond.clone(), body));
                if end == "end" {
                    break;
                }
                if let Some(c) = end.strip_prefix("else if ") {
                    cond = c.trim().to_string();
                    continue;
                }
                let (body, end) = parse(tokens, pos, &["end"])?;
                if end != "end" {
                    return Err("else without end".into());
                }
                otherwise = body;
                break;
            }
            nodes.push(Node::If(branches, otherwise));
        } else if let Some(spec) = s.strip_prefix("range ") {
            let (vars, pipe) = match spec.split_once(":=") {
                Some((v, p)) => (v.trim(), p.trim()),
                None => ("", spec.trim()),
            };
            let names: Vec<String> = vars
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            let (key, val) = match names.as_slice() {
                [] => (None, None),
                [v] => (None, Some(v.clone())),
                [k, v] => (Some(k.clone()), Some(v.clone())),
                _ => return Err(format!("range with {} variables", names.len())),
            };
            let (body, end) = parse(tokens, pos, &["end"])?;
            if end != "end" {
                return Err("range without end".into());
            }
            nodes.push(Node::Range(key, val, pipe.to_string(), body));
        } else if s.starts_with('$') && (s.contains(":=") || s.contains(" = ")) {
            let declare = s.contains(":=");
            let (name, pipe) = s
                .split_once(if declare { ":=" } else { " = " })
                .ok_or("bad assignment")?;
            nodes.push(Node::Set(name.trim().into(), pipe.trim().into(), declare));
        } else {
            nodes.push(Node::Output(s.clone()));
        }
    }
    if stop.is_empty() {
        Ok((nodes, String::new()))
    } else {
        Err(format!("missing {{{{ {} }}}}", stop.join(" / ")))
    }
}

/// Tokens of a pipeline: words, string literals and parenthesised groups.
fn split_args(s: &str) -> R<Vec<String>> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            c if c.is_whitespace() => i += 1,
            '"' => {
                let mut j = i + 1;
                while j < chars.len() && chars[j] != '"' {
                    j += if chars[j] == '\\' { 2 } else { 1 };
                }
                if j >= chars.len() {
                    return Err(format!("unterminated string in {s:?}"));
                }
                out.push(chars[i..=j].iter().collect());
                i = j + 1;
            }
            '(' => {
                let (mut depth, mut j) = (0, i);
                loop {
                    match chars.get(j) {
                        Some('(') => depth += 1,
                        Some(')') => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        None => return Err(format!("unbalanced ( in {s:?}")),
                        _ => {}
                    }
                    j += 1;
                }
                out.push(chars[i..=j].iter().collect());
                i = j + 1;
            }
            _ => {
                let j = (i..chars.len())
                    .find(|&j| chars[j].is_whitespace())
                    .unwrap_or(chars.len());
                out.push(chars[i..j].iter().collect());
                i = j;
            }
        }
    }
    Ok(out)
}

fn unescape(lit: &str) -> String {
    let inner = &lit[1..lit.len() - 1];
    let mut out = String::new();
    let mut it = inner.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(o) => out.push(o),
            None => {}
        }
    }
    out
}

struct Env<'a> {
    root: &'a GoValue,
    scopes: Vec<Vec<(String, GoValue)>>,
}

impl Env<'_> {
    fn var(&self, name: &str) -> R<GoValue> {
        if name == "$" {
            return Ok(self.root.clone());
        }
        for scope in self.scopes.iter().rev() {
            if let Some((_, v)) = scope.iter().rev().find(|(n, _)| n == name) {
                return Ok(v.clone());
            }
        }
        Err(format!("undefined variable {name}"))
    }

    fn assign(&mut self, name: &str, v: GoValue) -> R<()> {
        for scope in self.scopes.iter_mut().rev() {
            if let Some(slot) = scope.iter_mut().rev().find(|(n, _)| n == name) {
                slot.1 = v;
                return Ok(());
            }
        }
        Err(format!("assignment to undeclared {name}"))
    }

    fn operand(&self, tok: &str, dot: &GoValue) -> R<GoValue> {
        if tok.starts_with('"') {
            return Ok(GoValue::Str(unescape(tok)));
        }
        if let Ok(i) = tok.parse::<i64>() {
            return Ok(GoValue::Int(i));
        }
        if tok == "true" || tok == "false" {
            return Ok(GoValue::Bool(tok == "true"));
        }
        if let Some(inner) = tok.strip_prefix('(').and_then(|t| t.strip_suffix(')')) {
            return self.pipeline(inner, dot);
        }
        let (mut v, fields) = if tok == "." {
            (dot.clone(), "")
        } else if let Some(f) = tok.strip_prefix('.') {
            (dot.clone(), f)
        } else if tok.starts_with('$') {
            let (name, f) = tok.split_once('.').unwrap_or((tok, ""));
            (self.var(name)?, f)
        } else {
            return Err(format!("unknown operand {tok}"));
        };
        for f in fields.split('.').filter(|f| !f.is_empty()) {
            v = v.field(f);
        }
        Ok(v)
    }

    fn pipeline(&self, s: &str, dot: &GoValue) -> R<GoValue> {
        if s.contains(" | ") {
            return Err(format!("pipes are not supported: {s}"));
        }
        let toks = split_args(s)?;
        let Some((head, rest)) = toks.split_first() else {
            return Err("empty pipeline".into());
        };
        let args = || -> R<Vec<GoValue>> { rest.iter().map(|t| self.operand(t, dot)).collect() };
        let int = |v: &GoValue| match v {
            GoValue::Int(i) => Ok(*i),
            other => Err(format!("{other:?} is not an integer")),
        };
        let v = match head.as_str() {
            "eq" => {
                let a = args()?;
                GoValue::Bool(a.len() >= 2 && a[1..].iter().any(|b| *b == a[0]))
            }
            "ne" => {
                let a = args()?;
                GoValue::Bool(a.len() == 2 && a[0] != a[1])
            }
            "lt" | "gt" => {
                let a = args()?;
                let (x, y) = (int(&a[0])?, int(&a[1])?);
                GoValue::Bool(if head == "lt" { x < y } else { x > y })
            }
            "not" => GoValue::Bool(!args()?.first().is_some_and(GoValue::truthy)),
            "and" => {
                let mut last = GoValue::Nil;
                for t in rest {
                    last = self.operand(t, dot)?;
                    if !last.truthy() {
                        break;
                    }
                }
                last
            }
            "or" => {
                let mut last = GoValue::Nil;
                for t in rest {
                    last = self.operand(t, dot)?;
                    if last.truthy() {
                        break;
                    }
                }
                last
            }
            "len" => match args()?.first() {
                Some(GoValue::List(l)) => GoValue::Int(l.len() as i64),
                Some(GoValue::Str(s)) => GoValue::Int(s.len() as i64),
                Some(GoValue::Map(m)) => GoValue::Int(m.len() as i64),
                other => return Err(format!("len of {other:?}")),
            },
            "slice" => {
                let a = args()?;
                let GoValue::List(l) = &a[0] else {
                    return Err("slice of a non-list".into());
                };
                let from = a.get(1).map(int).transpose()?.unwrap_or(0) as usize;
                let to = a.get(2).map(int).transpose()?.unwrap_or(l.len() as i64) as usize;
                GoValue::List(l.get(from..to).ok_or("slice out of range")?.to_vec())
            }
            "index" => {
                let a = args()?;
                match (&a[0], &a[1]) {
                    (GoValue::List(l), GoValue::Int(i)) => {
                        l.get(*i as usize).cloned().ok_or("index out of range")?
                    }
                    (GoValue::Map(m), GoValue::Str(k)) => m.get(k).cloned().unwrap_or(GoValue::Nil),
                    _ => return Err("bad index".into()),
                }
            }
            _ if rest.is_empty() => self.operand(head, dot)?,
            other => return Err(format!("unknown function {other}")),
        };
        Ok(v)
    }

    fn run(&mut self, nodes: &[Node], dot: &GoValue, out: &mut String) -> R<()> {
        for n in nodes {
            match n {
                Node::Text(t) => out.push_str(t),
                Node::Output(p) => out.push_str(&self.pipeline(p, dot)?.print()),
                Node::Set(name, p, declare) => {
                    let v = self.pipeline(p, dot)?;
                    if *declare {
                        self.scopes
                            .last_mut()
                            .expect("a scope")
                            .push((name.clone(), v));
                    } else {
                        self.assign(name, v)?;
                    }
                }
                Node::If(branches, otherwise) => {
                    let mut done = false;
                    for (cond, body) in branches {
                        if self.pipeline(cond, dot)?.truthy() {
                            self.scoped(body, dot, out, vec![])?;
                            done = true;
                            break;
                        }
                    }
                    if !done {
                        self.scoped(otherwise, dot, out, vec![])?;
                    }
                }
                Node::Range(key, val, p, body) => {
                    let items = match self.pipeline(p, dot)? {
                        GoValue::List(l) => l,
                        GoValue::Nil => Vec::new(),
                        other => return Err(format!("range over {other:?}")),
                    };
                    for (i, item) in items.iter().enumerate() {
                        let mut vars = Vec::new();
                        if let Some(k) = key {
                            vars.push((k.clone(), GoValue::Int(i as i64)));
                        }
                        if let Some(v) = val {
                            vars.push((v.clone(), item.clone()));
                        }
                        self.scoped(body, item, out, vars)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn scoped(
        &mut self,
        nodes: &[Node],
        dot: &GoValue,
        out: &mut String,
        vars: Vec<(String, GoValue)>,
    ) -> R<()> {
        self.scopes.push(vars);
        let r = self.run(nodes, dot, out);
        self.scopes.pop();
        r
    }
}

/// Renders `template` with `data` as dot (and `$`).
///
/// # Errors
/// A message naming the construct when the template uses something outside the subset.
pub fn render(template: &str, data: &GoValue) -> std::result::Result<String, String> {
    let tokens = lex(template)?;
    let (nodes, _) = parse(&tokens, &mut 0, &[])?;
    let mut env = Env {
        root: data,
        scopes: vec![Vec::new()],
    };
    let mut out = String::new();
    env.run(&nodes, data, &mut out)?;
    Ok(out)
}
