//! Protobuf wire format, just enough to keep what prost cannot: the byte ranges of fields (so
//! fields the IR does not model are carried verbatim, unknown ones included) and a streaming
//! encoder that writes a message tree of any size without building it in memory.

use bytes::Bytes;
use std::io::{self, Write};
use std::ops::Range;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for WireError {}

/// One field occurrence in an encoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub number: u32,
    pub wire_type: u8,
    /// The whole field: key and payload.
    pub full: Range<usize>,
    /// The payload (for length-delimited fields, without the length prefix).
    pub payload: Range<usize>,
}

pub fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, WireError> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let b = *buf.get(*pos).ok_or_else(|| WireError("truncated varint (the file may be truncated)".into()))?;
        *pos += 1;
        if shift == 63 && b > 1 {
            return Err(WireError("varint overflows 64 bits".into()));
        }
        value |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(value);
        }
    }
    Err(WireError("varint longer than 10 bytes".into()))
}

/// Splits a message into its fields, checking every length against the buffer.
pub fn fields(buf: &[u8]) -> Result<Vec<Field>, WireError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let key = read_varint(buf, &mut pos)?;
        let number = u32::try_from(key >> 3).map_err(|_| WireError(format!("field number {} too large", key >> 3)))?;
        if number == 0 {
            return Err(WireError(format!("field number 0 at byte {start}")));
        }
        let wire_type = (key & 7) as u8;
        let payload = match wire_type {
            0 => {
                let p = pos;
                read_varint(buf, &mut pos)?;
                p..pos
            }
            1 | 5 => {
                let n = if wire_type == 1 { 8 } else { 4 };
                if pos + n > buf.len() {
                    return Err(WireError("truncated fixed-width field (the file may be truncated)".into()));
                }
                pos += n;
                pos - n..pos
            }
            2 => {
                let len = read_varint(buf, &mut pos)?;
                let len = usize::try_from(len).map_err(|_| WireError("length does not fit in memory".into()))?;
                let end = pos.checked_add(len).filter(|&e| e <= buf.len()).ok_or_else(|| {
                    WireError(format!(
                        "field {number} claims {len} bytes but only {} remain (the file may be truncated)",
                        buf.len() - pos
                    ))
                })?;
                let p = pos;
                pos = end;
                p..end
            }
            3 => {
                // Deprecated group: skip to the matching end-group.
                let p = pos;
                let mut depth = 1;
                while depth > 0 {
                    let inner = fields_one(buf, &mut pos)?;
                    match inner {
                        3 => depth += 1,
                        4 => depth -= 1,
                        _ => {}
                    }
                }
                p..pos
            }
            _ => {
                return Err(WireError(format!("invalid wire type {wire_type} at byte {start}")));
            }
        };
        out.push(Field { number, wire_type, full: start..pos, payload });
    }
    Ok(out)
}

// Skips one field inside a group, returning its wire type.
fn fields_one(buf: &[u8], pos: &mut usize) -> Result<u8, WireError> {
    let key = read_varint(buf, pos)?;
    let wt = (key & 7) as u8;
    match wt {
        0 => {
            read_varint(buf, pos)?;
        }
        1 => *pos += 8,
        5 => *pos += 4,
        2 => {
            let len = read_varint(buf, pos)? as usize;
            *pos = pos.saturating_add(len);
        }
        3 | 4 => {}
        _ => return Err(WireError(format!("invalid wire type {wt}"))),
    }
    if *pos > buf.len() {
        return Err(WireError("truncated group (the file may be truncated)".into()));
    }
    Ok(wt)
}

/// Concatenates the encodings of the fields whose numbers are in `keep`.
pub fn filtered(buf: &[u8], fields: &[Field], keep: &[u32]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields.iter().filter(|f| keep.contains(&f.number)) {
        out.extend_from_slice(&buf[f.full.clone()]);
    }
    out
}

// ---- encoding -------------------------------------------------------------------------------

pub fn encode_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Key and length prefix of a length-delimited field.
pub fn len_prefix(number: u32, len: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(10);
    encode_varint((u64::from(number) << 3) | 2, &mut p);
    encode_varint(len, &mut p);
    p
}

/// A piece of an encoded message.
#[derive(Debug, Clone)]
pub enum Chunk {
    /// Complete encoded field(s).
    Owned(Vec<u8>),
    /// Complete encoded field(s) shared with an input file.
    Shared(Bytes),
    /// A length-delimited field whose payload is shared data (tensor bytes): written as-is.
    Data { number: u32, data: Bytes },
    /// A nested message.
    Message { number: u32, body: Parts },
}

/// An encoded message as a list of chunks sorted by field number, with its length cached.
#[derive(Debug, Clone, Default)]
pub struct Parts {
    chunks: Vec<(u32, Chunk)>,
    len: u64,
}

fn chunk_len(c: &Chunk) -> u64 {
    match c {
        Chunk::Owned(v) => v.len() as u64,
        Chunk::Shared(b) => b.len() as u64,
        Chunk::Data { number, data } => {
            let n = data.len() as u64;
            (varint_len(u64::from(*number) << 3) + varint_len(n)) as u64 + n
        }
        Chunk::Message { number, body } => {
            (varint_len(u64::from(*number) << 3) + varint_len(body.len)) as u64 + body.len
        }
    }
}

impl Parts {
    pub fn new() -> Parts {
        Parts::default()
    }

    /// Adds a chunk that holds fields numbered `number`.
    pub fn push(&mut self, number: u32, chunk: Chunk) {
        self.len += chunk_len(&chunk);
        self.chunks.push((number, chunk));
    }

    /// Adds every field of an encoded message (e.g. a prost encoding of the modelled fields).
    pub fn push_encoded(&mut self, encoded: Vec<u8>) -> Result<(), WireError> {
        for f in fields(&encoded)? {
            self.push(f.number, Chunk::Owned(encoded[f.full].to_vec()));
        }
        Ok(())
    }

    /// Orders chunks by field number (stable, so repeated fields keep their order); fields not
    /// in `known` (unknown to the schema) go last, as protobuf writers place them.
    pub fn finish(mut self, known: &[u32]) -> Parts {
        self.chunks.sort_by_key(|(n, _)| (!known.contains(n), if known.contains(n) { *n } else { 0 }));
        self
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Streams the message to `w`.
    pub fn write_to(&self, w: &mut dyn Write) -> io::Result<()> {
        for (_, c) in &self.chunks {
            match c {
                Chunk::Owned(v) => w.write_all(v)?,
                Chunk::Shared(b) => w.write_all(b)?,
                Chunk::Data { number, data } => {
                    w.write_all(&len_prefix(*number, data.len() as u64))?;
                    w.write_all(data)?;
                }
                Chunk::Message { number, body } => {
                    w.write_all(&len_prefix(*number, body.len))?;
                    body.write_to(w)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            encode_varint(v, &mut b);
            assert_eq!(b.len(), varint_len(v));
            let mut pos = 0;
            assert_eq!(read_varint(&b, &mut pos).unwrap(), v);
        }
    }

    #[test]
    fn truncated_length_is_an_error() {
        let mut b = len_prefix(7, 100);
        b.extend_from_slice(&[0; 10]);
        let e = fields(&b).unwrap_err();
        assert!(e.0.contains("truncated"), "{e}");
    }

    #[test]
    fn parts_sort_and_stream() {
        let mut p = Parts::new();
        p.push(9, Chunk::Data { number: 9, data: Bytes::from_static(b"abc") });
        p.push(1, Chunk::Owned(vec![8, 1]));
        p.push(99, Chunk::Owned(vec![0x98, 0x06, 5]));
        let p = p.finish(&[1, 9]);
        let mut out = Vec::new();
        p.write_to(&mut out).unwrap();
        assert_eq!(out, vec![8, 1, 0x4a, 3, b'a', b'b', b'c', 0x98, 0x06, 5]);
        assert_eq!(p.len(), out.len() as u64);
    }
}
