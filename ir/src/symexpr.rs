//! Symbolic dimension expressions: linear combinations of symbols with integer coefficients
//! (`seq`, `2*seq`, `seq+1`, `batch*0+3` folds to `3`). Products of two symbols are not
//! represented (they become unknown), which covers what exporters produce for concatenation,
//! padding, slicing and cache growth.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Lin {
    pub terms: BTreeMap<String, i64>,
    pub constant: i64,
}

impl Lin {
    pub fn constant(c: i64) -> Lin {
        Lin { terms: BTreeMap::new(), constant: c }
    }
    pub fn symbol(s: &str) -> Lin {
        Lin { terms: [(s.to_string(), 1)].into(), constant: 0 }
    }

    /// Parses `2*seq+1`, `seq - 1`, `past_sequence_length + 1`, `3`. Anything else (e.g. a
    /// free-form name like `batch_size`) is a single symbol.
    pub fn parse(s: &str) -> Lin {
        let src: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        let mut out = Lin::default();
        let mut term = String::new();
        let mut sign = 1i64;
        let flush = |term: &str, sign: i64, out: &mut Lin| -> bool {
            if term.is_empty() {
                return true;
            }
            let (coef, sym) = match term.split_once('*') {
                Some((a, b)) => match (a.parse::<i64>(), b.parse::<i64>()) {
                    (Ok(c), Err(_)) => (c, Some(b)),
                    (Err(_), Ok(c)) => (c, Some(a)),
                    (Ok(x), Ok(y)) => (x * y, None),
                    _ => return false,
                },
                None => match term.parse::<i64>() {
                    Ok(c) => (c, None),
                    Err(_) => (1, Some(term)),
                },
            };
            match sym {
                Some(sym) => {
                    if !sym.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '.' || c == ':') {
                        return false;
                    }
                    *out.terms.entry(sym.to_string()).or_default() += sign * coef;
                }
                None => out.constant += sign * coef,
            }
            true
        };
        let chars: Vec<char> = src.chars().collect();
        for (i, &c) in chars.iter().enumerate() {
            if (c == '+' || c == '-') && i > 0 {
                if !flush(&term, sign, &mut out) {
                    return Lin::symbol(s);
                }
                term.clear();
                sign = if c == '-' { -1 } else { 1 };
            } else if c == '-' && i == 0 {
                sign = -1;
            } else {
                term.push(c);
            }
        }
        if !flush(&term, sign, &mut out) {
            return Lin::symbol(s);
        }
        out.terms.retain(|_, c| *c != 0);
        out
    }

    /// Whether the expression is non-negative for every value of its symbols, taking each
    /// symbol to be a dim (a size, at least 0).
    pub fn non_negative(&self) -> bool {
        self.constant >= 0 && self.terms.values().all(|&c| c >= 0)
    }

    pub fn as_constant(&self) -> Option<i64> {
        self.terms.is_empty().then_some(self.constant)
    }

    pub fn add(&self, other: &Lin) -> Lin {
        let mut out = self.clone();
        for (s, c) in &other.terms {
            *out.terms.entry(s.clone()).or_default() += c;
        }
        out.constant += other.constant;
        out.terms.retain(|_, c| *c != 0);
        out
    }

    pub fn scale(&self, k: i64) -> Lin {
        let mut out =
            Lin { terms: self.terms.iter().map(|(s, c)| (s.clone(), c * k)).collect(), constant: self.constant * k };
        out.terms.retain(|_, c| *c != 0);
        out
    }

    pub fn sub(&self, other: &Lin) -> Lin {
        self.add(&other.scale(-1))
    }

    /// Product, when at most one side has symbols.
    pub fn mul(&self, other: &Lin) -> Option<Lin> {
        match (self.as_constant(), other.as_constant()) {
            (Some(a), _) => Some(other.scale(a)),
            (_, Some(b)) => Some(self.scale(b)),
            _ => None,
        }
    }
}

impl fmt::Display for Lin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (s, &c) in &self.terms {
            let (neg, a) = (c < 0, c.abs());
            if first {
                if neg {
                    write!(f, "-")?;
                }
            } else {
                write!(f, "{}", if neg { "-" } else { "+" })?;
            }
            if a == 1 {
                write!(f, "{s}")?
            } else {
                write!(f, "{a}*{s}")?
            }
            first = false;
        }
        if first {
            write!(f, "{}", self.constant)
        } else if self.constant > 0 {
            write!(f, "+{}", self.constant)
        } else if self.constant < 0 {
            write!(f, "-{}", -self.constant)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        assert_eq!(Lin::parse("seq").to_string(), "seq");
        assert_eq!(Lin::parse("2*seq + 1").to_string(), "2*seq+1");
        assert_eq!(Lin::parse("seq*2-1").to_string(), "2*seq-1");
        assert_eq!(Lin::parse("past+seq").to_string(), "past+seq");
        assert_eq!(Lin::parse("seq-seq+3").as_constant(), Some(3));
        assert_eq!(Lin::parse("a*b").to_string(), "a*b", "a product of symbols stays one opaque symbol");
        assert_eq!(Lin::parse("unk__0").to_string(), "unk__0");
    }

    #[test]
    fn arithmetic() {
        let s = Lin::parse("seq");
        assert_eq!(s.add(&Lin::constant(1)).to_string(), "seq+1");
        assert_eq!(s.scale(2).add(&s).to_string(), "3*seq");
        assert_eq!(s.sub(&s).as_constant(), Some(0));
        assert_eq!(s.mul(&Lin::constant(4)).unwrap().to_string(), "4*seq");
        assert!(s.mul(&s).is_none());
    }
}
