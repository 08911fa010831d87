//! The pipeline language: `dce,fold(max_mb=64),fixpoint(identity,dce)`.
//!
//! ```text
//! pipeline := ε | item ("," item)*
//! item     := name [ "(" [arg ("," arg)*] ")" ]
//! arg      := key "=" value | item
//! ```
//! Names and keys are `[A-Za-z0-9_.:-]+`; values run to the next `,` or `)` at the same depth.

use std::fmt;

/// Named pipelines: a name here may stand for its pipeline wherever a pass name may appear.
/// `O1` keeps outputs bit-identical; `O2` adds constant folding and the fusions, which change
/// results by float rounding only (rtol 1e-4).
pub const PRESETS: &[(&str, &str, &str)] = &[
    (
        "O1",
        "fixpoint(identity,shape-fold,cse,transpose,dce)",
        "exact clean-up: no-op removal, shape folding, CSE, transpose sinking, DCE",
    ),
    (
        "O2",
        "fixpoint(fold,identity,shape-fold,simplify,fold-gather,cse,transpose,fuse-pad,fuse-bn,fuse-norm,fuse-act,fuse-attention,fuse-qkv,sink-bias,dce)",
        "O1 plus constant folding, chain clean-up, embedding folding, Pad/affine/BatchNorm folding, norm/activation/attention fusion, residual bias sinking",
    ),
    (
        "fuse",
        "fixpoint(fold,identity,shape-fold,simplify,fold-gather,cse,transpose,fuse-pad,fuse-bn,fuse-norm,fuse-act,fuse-attention,fuse-qkv,sink-bias,dce)",
        "the fusions (for the target's capabilities) with the clean-up passes, to a fixpoint; same as O2 today",
    ),
];

/// The pipeline a preset name stands for.
pub fn preset(name: &str) -> Option<&'static str> {
    PRESETS.iter().find(|p| p.0 == name).map(|p| p.1)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub name: String,
    /// `key=value` options, in order.
    pub options: Vec<(String, String)>,
    /// Nested items (for combinators such as `fixpoint`).
    pub children: Vec<Item>,
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)?;
        if self.options.is_empty() && self.children.is_empty() {
            return Ok(());
        }
        let mut args: Vec<String> = self.children.iter().map(|c| c.to_string()).collect();
        args.extend(self.options.iter().map(|(k, v)| format!("{k}={v}")));
        write!(f, "({})", args.join(","))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub position: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pipeline syntax error at character {}: {}", self.position + 1, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Parses a pipeline. The empty string (or only spaces) is the empty pipeline.
pub fn parse(src: &str) -> Result<Vec<Item>, ParseError> {
    let mut p = Parser { s: src.as_bytes(), pos: 0 };
    p.skip_ws();
    if p.pos == p.s.len() {
        return Ok(Vec::new());
    }
    let items = p.items()?;
    p.skip_ws();
    if p.pos != p.s.len() {
        return Err(p.err(format!("unexpected '{}'", p.s[p.pos] as char)));
    }
    Ok(items)
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, message: String) -> ParseError {
        ParseError { position: self.pos, message }
    }
    fn skip_ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }
    fn ident(&mut self) -> Result<String, ParseError> {
        self.skip_ws();
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b':') {
                self.pos += 1;
            } else {
                break;
            }
        }
        if start == self.pos {
            return Err(match self.peek() {
                Some(c) => self.err(format!("expected a pass name, found '{}'", c as char)),
                None => self.err("expected a pass name, found the end".into()),
            });
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.pos]).into_owned())
    }
    fn items(&mut self) -> Result<Vec<Item>, ParseError> {
        let mut items = vec![self.item()?];
        loop {
            self.skip_ws();
            if self.peek() == Some(b',') {
                self.pos += 1;
                items.push(self.item()?);
            } else {
                return Ok(items);
            }
        }
    }
    fn item(&mut self) -> Result<Item, ParseError> {
        let name = self.ident()?;
        let mut item = Item { name, options: Vec::new(), children: Vec::new() };
        self.skip_ws();
        if self.peek() != Some(b'(') {
            return Ok(item);
        }
        self.pos += 1;
        self.skip_ws();
        if self.peek() == Some(b')') {
            self.pos += 1;
            return Ok(item);
        }
        loop {
            self.skip_ws();
            let arg_start = self.pos;
            let key_or_name = self.ident()?;
            self.skip_ws();
            if self.peek() == Some(b'=') {
                self.pos += 1;
                let v = self.value()?;
                if item.options.iter().any(|(k, _)| *k == key_or_name) {
                    return Err(self.err(format!("option '{key_or_name}' given twice to '{}'", item.name)));
                }
                item.options.push((key_or_name, v));
            } else {
                // A nested item: parse it again from its name.
                self.pos = arg_start;
                item.children.push(self.item()?);
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b')') => {
                    self.pos += 1;
                    return Ok(item);
                }
                Some(c) => {
                    return Err(self.err(format!("expected ',' or ')', found '{}'", c as char)));
                }
                None => {
                    return Err(self.err(format!("missing ')' after the arguments of '{}'", item.name)));
                }
            }
        }
    }
    fn value(&mut self) -> Result<String, ParseError> {
        self.skip_ws();
        let start = self.pos;
        let mut depth = 0;
        while let Some(c) = self.peek() {
            match c {
                b'(' => depth += 1,
                b')' if depth == 0 => break,
                b')' => depth -= 1,
                b',' if depth == 0 => break,
                _ => {}
            }
            self.pos += 1;
        }
        let v = String::from_utf8_lossy(&self.s[start..self.pos]).trim().to_string();
        if v.is_empty() {
            return Err(self.err("expected a value after '='".into()));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn item(name: &str) -> Item {
        Item { name: name.into(), options: vec![], children: vec![] }
    }

    #[test]
    fn empty() {
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse("  ").unwrap(), vec![]);
    }

    #[test]
    fn plain_options_and_nesting() {
        let p = parse("dce, fold(max_mb=64),fixpoint(identity,dce(x=1),max_iter=3)").unwrap();
        assert_eq!(
            p,
            vec![
                item("dce"),
                Item { name: "fold".into(), options: vec![("max_mb".into(), "64".into())], children: vec![] },
                Item {
                    name: "fixpoint".into(),
                    options: vec![("max_iter".into(), "3".into())],
                    children: vec![
                        item("identity"),
                        Item { name: "dce".into(), options: vec![("x".into(), "1".into())], children: vec![] }
                    ],
                },
            ]
        );
        assert_eq!(p[2].to_string(), "fixpoint(identity,dce(x=1),max_iter=3)");
    }

    #[test]
    fn values_may_hold_colons_and_parens() {
        let p = parse("prune-depth(budget=latency:0.8),x(f=g(1,2))").unwrap();
        assert_eq!(p[0].options, vec![("budget".into(), "latency:0.8".into())]);
        assert_eq!(p[1].options, vec![("f".into(), "g(1,2)".into())]);
    }

    #[test]
    fn errors_say_where() {
        let e = parse("dce,,fold").unwrap_err();
        assert_eq!(e.position, 4);
        assert!(e.message.contains("expected a pass name"));
        assert!(parse("fold(max_mb=64").unwrap_err().message.contains("missing ')'"));
        assert!(parse("fold(max_mb=)").unwrap_err().message.contains("expected a value"));
        assert!(parse("fold(a=1,a=2)").unwrap_err().message.contains("given twice"));
        assert!(parse("dce)").unwrap_err().message.contains("unexpected ')'"));
    }
}
