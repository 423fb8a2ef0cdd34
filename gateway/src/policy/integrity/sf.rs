//! The small part of RFC 8941 structured fields that `Content-Digest`, `Signature-Input` and
//! `Signature` use: dictionaries whose members are byte sequences (`:base64:`) or inner lists
//! of strings, each with parameters. Strict: anything else is an error, never a guess.

/// A bare item of a parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bare {
    Integer(i64),
    String(String),
    Token(String),
    Bytes(Vec<u8>),
    Bool(bool),
}

/// One dictionary member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub key: String,
    pub value: Value,
    pub params: Vec<(String, Bare)>,
    /// The member's value and parameters exactly as written (for `@signature-params`).
    pub raw_value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Item(Bare),
    /// An inner list of strings (component identifiers), each with its own parameters.
    InnerList(Vec<(String, Vec<(String, Bare)>)>),
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

type R<T> = Result<T, &'static str>;

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn key(&mut self) -> R<String> {
        let start = self.i;
        match self.peek() {
            Some(c) if c.is_ascii_lowercase() || c == b'*' => self.i += 1,
            _ => return Err("bad key"),
        }
        while let Some(c) = self.peek() {
            if c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || matches!(c, b'_' | b'-' | b'.' | b'*')
            {
                self.i += 1;
            } else {
                break;
            }
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn string(&mut self) -> R<String> {
        if !self.eat(b'"') {
            return Err("expected a string");
        }
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err("unterminated string"),
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(c @ (b'"' | b'\\')) => {
                            out.push(c as char);
                            self.i += 1;
                        }
                        _ => return Err("bad escape"),
                    }
                }
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(c) if (0x20..0x7f).contains(&c) => {
                    out.push(c as char);
                    self.i += 1;
                }
                Some(_) => return Err("bad character in string"),
            }
        }
    }

    fn bare(&mut self) -> R<Bare> {
        match self.peek() {
            Some(b'"') => self.string().map(Bare::String),
            Some(b':') => {
                self.i += 1;
                let start = self.i;
                while let Some(c) = self.peek() {
                    if c == b':' {
                        break;
                    }
                    if !(c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=')) {
                        return Err("bad base64");
                    }
                    self.i += 1;
                }
                if !self.eat(b':') {
                    return Err("unterminated byte sequence");
                }
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(&self.s[start..self.i - 1])
                    .map(Bare::Bytes)
                    .map_err(|_| "bad base64")
            }
            Some(b'?') => {
                self.i += 1;
                match self.peek() {
                    Some(b'1') => {
                        self.i += 1;
                        Ok(Bare::Bool(true))
                    }
                    Some(b'0') => {
                        self.i += 1;
                        Ok(Bare::Bool(false))
                    }
                    _ => Err("bad boolean"),
                }
            }
            Some(c) if c == b'-' || c.is_ascii_digit() => {
                let start = self.i;
                self.i += 1;
                while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.i += 1;
                }
                if self.i - start > 16 {
                    return Err("integer too long");
                }
                std::str::from_utf8(&self.s[start..self.i])
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .map(Bare::Integer)
                    .ok_or("bad integer")
            }
            Some(c) if c.is_ascii_alphabetic() || c == b'*' => {
                let start = self.i;
                while let Some(c) = self.peek() {
                    if c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c) {
                        self.i += 1;
                    } else {
                        break;
                    }
                }
                Ok(Bare::Token(
                    String::from_utf8_lossy(&self.s[start..self.i]).into_owned(),
                ))
            }
            _ => Err("bad item"),
        }
    }

    fn params(&mut self) -> R<Vec<(String, Bare)>> {
        let mut out = Vec::new();
        while self.eat(b';') {
            self.skip_sp();
            let k = self.key()?;
            let v = if self.eat(b'=') {
                self.bare()?
            } else {
                Bare::Bool(true)
            };
            out.push((k, v));
        }
        Ok(out)
    }
}

/// Parse a dictionary. Duplicate keys keep the last value, as RFC 8941 says.
pub fn dictionary(text: &str) -> R<Vec<Member>> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let mut out: Vec<Member> = Vec::new();
    p.skip_sp();
    if p.peek().is_none() {
        return Ok(out);
    }
    loop {
        let key = p.key()?;
        let value_start;
        let value = if p.eat(b'=') {
            value_start = p.i;
            if p.eat(b'(') {
                let mut items = Vec::new();
                loop {
                    p.skip_sp();
                    if p.eat(b')') {
                        break;
                    }
                    let s = p.string()?;
                    let params = p.params()?;
                    items.push((s, params));
                    match p.peek() {
                        Some(b' ') | Some(b')') => {}
                        _ => return Err("bad inner list"),
                    }
                }
                Value::InnerList(items)
            } else {
                Value::Item(p.bare()?)
            }
        } else {
            value_start = p.i;
            Value::Item(Bare::Bool(true))
        };
        let params = p.params()?;
        let raw_value = String::from_utf8_lossy(&p.s[value_start..p.i]).into_owned();
        out.retain(|m| m.key != key);
        out.push(Member {
            key,
            value,
            params,
            raw_value,
        });
        p.skip_ows();
        if p.peek().is_none() {
            return Ok(out);
        }
        if !p.eat(b',') {
            return Err("expected , between members");
        }
        p.skip_ows();
        if p.peek().is_none() {
            return Err("trailing comma");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_digest_and_signature_fields() {
        let d =
            dictionary("sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:, sha-512=:AAAA:")
                .unwrap();
        assert_eq!(d.len(), 2);
        assert!(matches!(&d[0].value, Value::Item(Bare::Bytes(b)) if b.len() == 32));
        let s = dictionary(r#"sig1=("@method" "@authority" "content-digest";req);created=1618884473;keyid="k1";nonce="n-1", sig2=("@path")"#).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[0].raw_value,
            r#"("@method" "@authority" "content-digest";req);created=1618884473;keyid="k1";nonce="n-1""#
        );
        let Value::InnerList(items) = &s[0].value else {
            panic!()
        };
        assert_eq!(items.len(), 3);
        assert_eq!(items[2].1, vec![("req".to_string(), Bare::Bool(true))]);
        assert_eq!(
            s[0].params[0],
            ("created".to_string(), Bare::Integer(1618884473))
        );
    }

    #[test]
    fn refuses_malformed_fields() {
        for bad in [
            "sig1=(\"a\"",
            "sig1=:bad base64:",
            "Sig1=1",
            "a=1,",
            "a=\"x",
            "a=(\"x\"\"y\")",
            "a=1 b=2",
        ] {
            assert!(dictionary(bad).is_err(), "{bad}");
        }
    }
}
