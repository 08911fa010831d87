//! ggml's block formats: dequantisation to f32, bit for bit as ggml and the Python `gguf`
//! package (`gguf.quants.dequantize`) compute it, and a block/zero-point view of the integer
//! formats for ONNX `com.microsoft::MatMulNBits`.
//!
//! Every product and sum is an f32 operation in the same order as the reference (Rust never
//! fuses `a * b + c` into an FMA), so the results are identical floats: `d * q + m` for Q4_1 and
//! Q5_1, `(d * sc) * q - (dmin * m)` for the K-quants, `(d * sc) * q` for Q3_K and Q6_K.

// Index loops mirror ggml's block layouts more plainly than iterator chains would.
#![allow(clippy::needless_range_loop)]

use super::{GgmlType, GgufError};
use rayon::prelude::*;

/// Super-blocks of 256 elements (the K-quants).
const QK_K: usize = 256;

/// Elements per parallel work item; smaller inputs are done on the calling thread.
const CHUNK_ELEMS: usize = 1 << 16;

/// IQ4_NL / IQ4_XS non-linear levels.
const KVALUES_IQ4NL: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];
/// e2m1 levels, doubled (MXFP4, NVFP4).
const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// IEEE half to single precision, exactly (subnormals included; NaN payloads kept).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match exp {
        0 if man == 0 => sign,
        0 => {
            // man * 2^-24: both factors and the product are exact in f32.
            let v = man as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        0x1f => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// bfloat16 to f32 (exact: the high half of an f32).
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

#[inline]
fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// The bytes `n_elements` of `ty` take, or why they cannot be stored.
pub fn byte_len(ty: GgmlType, n_elements: u64) -> Result<u64, GgufError> {
    let (Some(bs), Some(ts)) = (ty.block_size(), ty.type_size()) else {
        return Err(GgufError::Unsupported { ty: ty.name(), id: ty.id() });
    };
    if !n_elements.is_multiple_of(bs as u64) {
        return Err(GgufError::Data {
            ty: ty.name(),
            message: format!("{n_elements} elements is not a multiple of the block size {bs}"),
        });
    }
    (n_elements / bs as u64).checked_mul(ts as u64).ok_or_else(|| GgufError::Data {
        ty: ty.name(),
        message: format!("{n_elements} elements overflow a 64-bit byte count"),
    })
}

/// Checks that `bytes` holds exactly `n_elements` of `ty`.
fn check_len(ty: GgmlType, bytes: &[u8], n_elements: usize) -> Result<(), GgufError> {
    let want = byte_len(ty, n_elements as u64)?;
    if bytes.len() as u64 != want {
        return Err(GgufError::Data {
            ty: ty.name(),
            message: format!("{n_elements} elements take {want} bytes, {} bytes given", bytes.len()),
        });
    }
    Ok(())
}

/// Runs `f` on every (block bytes, block output) pair, in parallel for large inputs.
fn for_blocks(bytes: &[u8], out: &mut [f32], bs: usize, ts: usize, f: impl Fn(&[u8], &mut [f32]) + Sync) {
    let per_chunk = (CHUNK_ELEMS / bs).max(1);
    let run = |b: &[u8], o: &mut [f32]| {
        for (bb, ob) in b.chunks_exact(ts).zip(o.chunks_exact_mut(bs)) {
            f(bb, ob);
        }
    };
    if out.len() <= CHUNK_ELEMS {
        run(bytes, out);
    } else {
        out.par_chunks_mut(per_chunk * bs).zip(bytes.par_chunks(per_chunk * ts)).for_each(|(o, b)| run(b, o));
    }
}

/// Dequantises `n_elements` of `ty` stored in `bytes` (exactly [`byte_len`] bytes), in storage
/// order. Errors for types with no dequantiser here (the IQ grid formats, Q8_1, Q1_0, unknown
/// ids) and for a length mismatch; never panics.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n_elements: usize) -> Result<Vec<f32>, GgufError> {
    if !ty.can_dequantize() {
        return Err(GgufError::Unsupported { ty: ty.name(), id: ty.id() });
    }
    check_len(ty, bytes, n_elements)?;
    let (bs, ts) = (ty.block_size().unwrap_or(1), ty.type_size().unwrap_or(1));
    let mut out = vec![0f32; n_elements];
    use GgmlType as T;
    match ty {
        T::F32 => for_blocks(bytes, &mut out, 1, 4, |b, o| o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        T::F16 => for_blocks(bytes, &mut out, 1, 2, |b, o| o[0] = f16_at(b, 0)),
        T::BF16 => for_blocks(bytes, &mut out, 1, 2, |b, o| o[0] = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]))),
        T::F64 => for_blocks(bytes, &mut out, 1, 8, |b, o| {
            o[0] = f64::from_le_bytes(b[..8].try_into().unwrap_or_default()) as f32
        }),
        T::I8 => for_blocks(bytes, &mut out, 1, 1, |b, o| o[0] = b[0] as i8 as f32),
        T::I16 => for_blocks(bytes, &mut out, 1, 2, |b, o| o[0] = i16::from_le_bytes([b[0], b[1]]) as f32),
        T::I32 => for_blocks(bytes, &mut out, 1, 4, |b, o| o[0] = i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32),
        T::I64 => for_blocks(bytes, &mut out, 1, 8, |b, o| {
            o[0] = i64::from_le_bytes(b[..8].try_into().unwrap_or_default()) as f32
        }),
        T::Q4_0 => for_blocks(bytes, &mut out, bs, ts, block_q4_0),
        T::Q4_1 => for_blocks(bytes, &mut out, bs, ts, block_q4_1),
        T::Q5_0 => for_blocks(bytes, &mut out, bs, ts, block_q5_0),
        T::Q5_1 => for_blocks(bytes, &mut out, bs, ts, block_q5_1),
        T::Q8_0 => for_blocks(bytes, &mut out, bs, ts, block_q8_0),
        T::Q2_K => for_blocks(bytes, &mut out, bs, ts, block_q2_k),
        T::Q3_K => for_blocks(bytes, &mut out, bs, ts, block_q3_k),
        T::Q4_K => for_blocks(bytes, &mut out, bs, ts, block_q4_k),
        T::Q5_K => for_blocks(bytes, &mut out, bs, ts, block_q5_k),
        T::Q6_K => for_blocks(bytes, &mut out, bs, ts, block_q6_k),
        T::Q8_K => for_blocks(bytes, &mut out, bs, ts, block_q8_k),
        T::IQ4_NL => for_blocks(bytes, &mut out, bs, ts, block_iq4_nl),
        T::IQ4_XS => for_blocks(bytes, &mut out, bs, ts, block_iq4_xs),
        T::TQ1_0 => for_blocks(bytes, &mut out, bs, ts, block_tq1_0),
        T::TQ2_0 => for_blocks(bytes, &mut out, bs, ts, block_tq2_0),
        T::MXFP4 => for_blocks(bytes, &mut out, bs, ts, block_mxfp4),
        T::NVFP4 => for_blocks(bytes, &mut out, bs, ts, block_nvfp4),
        _ => return Err(GgufError::Unsupported { ty: ty.name(), id: ty.id() }),
    }
    Ok(out)
}

// --- Block decoders. Each gets exactly one block's bytes and output slice. -------------------

/// Q4_0: f16 d, 16 bytes of nibbles (low nibbles are elements 0..16). v = d * (q - 8).
fn block_q4_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let x = b[2 + j];
        o[j] = d * ((x & 0x0f) as i32 - 8) as f32;
        o[j + 16] = d * ((x >> 4) as i32 - 8) as f32;
    }
}

/// Q4_1: f16 d, f16 m, nibbles. v = d * q + m.
fn block_q4_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for j in 0..16 {
        let x = b[4 + j];
        o[j] = d * (x & 0x0f) as f32 + m;
        o[j + 16] = d * (x >> 4) as f32 + m;
    }
}

/// The 5-bit codes of a Q5_0/Q5_1 block: `qh` holds bit 4 of element i in bit i.
#[inline]
fn q5_codes(qh: u32, qs: &[u8]) -> [u8; 32] {
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = (qs[j] & 0x0f) | ((((qh >> j) & 1) as u8) << 4);
        q[j + 16] = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    }
    q
}

/// Q5_0: f16 d, u32 high bits, nibbles. v = d * (q - 16).
fn block_q5_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let q = q5_codes(u32_at(b, 2), &b[6..22]);
    for j in 0..32 {
        o[j] = d * (q[j] as i32 - 16) as f32;
    }
}

/// Q5_1: f16 d, f16 m, u32 high bits, nibbles. v = d * q + m.
fn block_q5_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let q = q5_codes(u32_at(b, 4), &b[8..24]);
    for j in 0..32 {
        o[j] = d * q[j] as f32 + m;
    }
}

/// Q8_0: f16 d, 32 signed bytes. v = q * d.
fn block_q8_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        o[j] = (b[2 + j] as i8) as f32 * d;
    }
}

/// Q2_K codes (0..3) of a super-block: element p is bits 2*((p%128)/32) of qs[(p/128)*32 + p%32].
#[inline]
fn q2k_code(qs: &[u8], p: usize) -> u8 {
    (qs[(p / 128) * 32 + p % 32] >> (2 * ((p % 128) / 32))) & 3
}

/// Q2_K: 16 scale bytes (low nibble scale, high nibble min), 64 bytes of 2-bit codes, f16 d,
/// f16 dmin. v = (d * sc) * q - (dmin * m) per group of 16.
fn block_q2_k(b: &[u8], o: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for (s, &sc) in scales.iter().enumerate() {
        let dl = d * (sc & 0x0f) as f32;
        let ml = dmin * (sc >> 4) as f32;
        for p in s * 16..s * 16 + 16 {
            o[p] = dl * q2k_code(qs, p) as f32 - ml;
        }
    }
}

/// Q3_K's 16 signed 6-bit scales (sc - 32).
#[inline]
fn q3k_scales(sb: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (s, v) in out.iter_mut().enumerate() {
        let lo = (sb[s % 8] >> (4 * (s / 8))) & 0x0f;
        let hi = (sb[8 + s % 4] >> (2 * (s / 4))) & 0x03;
        *v = (lo | (hi << 4)) as i8 - 32;
    }
    out
}

/// Q3_K code of element p (-4..3): 2 low bits as Q2_K, minus 4 where the hmask bit is clear.
#[inline]
fn q3k_code(hmask: &[u8], qs: &[u8], p: usize) -> i8 {
    let lo = q2k_code(qs, p) as i8;
    let h = (hmask[p % 32] >> (p / 32)) & 1;
    lo - (((h ^ 1) << 2) as i8)
}

/// Q3_K: 32 bytes hmask, 64 bytes 2-bit codes, 12 bytes scales, f16 d. v = (d * sc) * q.
fn block_q3_k(b: &[u8], o: &mut [f32]) {
    let (hmask, qs) = (&b[0..32], &b[32..96]);
    let scales = q3k_scales(&b[96..108]);
    let d = f16_at(b, 108);
    for (s, &sc) in scales.iter().enumerate() {
        let dl = d * sc as f32;
        for p in s * 16..s * 16 + 16 {
            o[p] = dl * q3k_code(hmask, qs, p) as f32;
        }
    }
}

/// The 8 six-bit scales and mins of Q4_K/Q5_K (ggml's get_scale_min_k4).
#[inline]
fn k4_scale_min(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 0x3f;
        mn[j] = s[j + 4] & 0x3f;
        sc[j + 4] = (s[j + 8] & 0x0f) | ((s[j] >> 2) & 0x30);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 2) & 0x30);
    }
    (sc, mn)
}

/// Q4_K code of element p: sub-block j = p/32 is nibble j%2 of qs[(j/2)*32 + p%32].
#[inline]
fn q4k_code(qs: &[u8], p: usize) -> u8 {
    let j = p / 32;
    (qs[(j / 2) * 32 + p % 32] >> (4 * (j % 2))) & 0x0f
}

/// Q4_K: f16 d, f16 dmin, 12 bytes scales/mins, 128 bytes nibbles. v = (d * sc) * q - (dmin * m).
fn block_q4_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, mn) = k4_scale_min(&b[4..16]);
    let qs = &b[16..144];
    for j in 0..8 {
        let dl = d * sc[j] as f32;
        let ml = dmin * mn[j] as f32;
        for p in j * 32..j * 32 + 32 {
            o[p] = dl * q4k_code(qs, p) as f32 - ml;
        }
    }
}

/// Q5_K code: the Q4_K nibble plus bit j (the sub-block) of qh[p % 32] as bit 4.
#[inline]
fn q5k_code(qh: &[u8], qs: &[u8], p: usize) -> u8 {
    q4k_code(qs, p) | (((qh[p % 32] >> (p / 32)) & 1) << 4)
}

/// Q5_K: f16 d, f16 dmin, 12 bytes scales/mins, 32 bytes high bits, 128 bytes nibbles.
fn block_q5_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, mn) = k4_scale_min(&b[4..16]);
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for j in 0..8 {
        let dl = d * sc[j] as f32;
        let ml = dmin * mn[j] as f32;
        for p in j * 32..j * 32 + 32 {
            o[p] = dl * q5k_code(qh, qs, p) as f32 - ml;
        }
    }
}

/// Q6_K unsigned code (0..63) of element p; the value uses code - 32.
#[inline]
fn q6k_code(ql: &[u8], qh: &[u8], p: usize) -> u8 {
    let (g, r) = (p / 128, p % 128);
    let lo = (ql[g * 64 + r % 64] >> (4 * (r / 64))) & 0x0f;
    let hi = (qh[g * 32 + r % 32] >> (2 * (r / 32))) & 0x03;
    lo | (hi << 4)
}

/// Q6_K: 128 bytes low nibbles, 64 bytes high 2 bits, 16 signed scales, f16 d.
/// v = (d * sc) * (q - 32) per group of 16.
fn block_q6_k(b: &[u8], o: &mut [f32]) {
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for (s, &sc) in scales.iter().enumerate() {
        let dl = d * (sc as i8) as f32;
        for p in s * 16..s * 16 + 16 {
            o[p] = dl * (q6k_code(ql, qh, p) as i32 - 32) as f32;
        }
    }
}

/// Q8_K: f32 d, 256 signed bytes, 16 i16 block sums (unused here). v = d * q.
fn block_q8_k(b: &[u8], o: &mut [f32]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for j in 0..QK_K {
        o[j] = d * (b[4 + j] as i8) as f32;
    }
}

/// IQ4_NL: f16 d, nibbles indexing the non-linear levels. v = d * level.
fn block_iq4_nl(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let x = b[2 + j];
        o[j] = d * KVALUES_IQ4NL[(x & 0x0f) as usize] as f32;
        o[j + 16] = d * KVALUES_IQ4NL[(x >> 4) as usize] as f32;
    }
}

/// IQ4_XS: f16 d, u16 high scale bits, 4 bytes low scale nibbles, 128 bytes of nibbles;
/// 8 sub-blocks of 32 with scale d * (ls - 32).
fn block_iq4_xs(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let sh = u16::from_le_bytes([b[2], b[3]]);
    let (sl, qs) = (&b[4..8], &b[8..136]);
    for j in 0..8 {
        let lo = (sl[j / 2] >> (4 * (j % 2))) & 0x0f;
        let hi = ((sh >> (2 * j)) & 3) as u8;
        let dl = d * ((lo | (hi << 4)) as i8 - 32) as f32;
        for k in 0..16 {
            let x = qs[j * 16 + k];
            o[j * 32 + k] = dl * KVALUES_IQ4NL[(x & 0x0f) as usize] as f32;
            o[j * 32 + 16 + k] = dl * KVALUES_IQ4NL[(x >> 4) as usize] as f32;
        }
    }
}

/// TQ1_0: 48 bytes of base-3 digits (5 per byte), 4 bytes (4 per byte), f16 d. v = d * (t - 1).
fn block_tq1_0(b: &[u8], o: &mut [f32]) {
    const POW3: [u8; 5] = [1, 3, 9, 27, 81];
    let d = f16_at(b, 52);
    let ternary = |x: u8, n: usize| -> f32 { ((((x.wrapping_mul(POW3[n]) as u16) * 3) >> 8) as i32 - 1) as f32 };
    let mut p = 0;
    for n in 0..5 {
        for i in 0..32 {
            o[p] = d * ternary(b[i], n);
            p += 1;
        }
    }
    for n in 0..5 {
        for i in 0..16 {
            o[p] = d * ternary(b[32 + i], n);
            p += 1;
        }
    }
    for n in 0..4 {
        for i in 0..4 {
            o[p] = d * ternary(b[48 + i], n);
            p += 1;
        }
    }
}

/// TQ2_0: 64 bytes of 2-bit codes, f16 d. v = d * (q - 1).
fn block_tq2_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 64);
    for (p, v) in o.iter_mut().enumerate().take(QK_K) {
        *v = d * (q2k_code(&b[0..64], p) as i32 - 1) as f32;
    }
}

/// ggml_e8m0_to_fp32_half: 2^(e - 128), with the two smallest exponents as subnormals.
#[inline]
fn e8m0_half(e: u8) -> f32 {
    let bits = if e < 2 { 0x0020_0000u32 << e } else { ((e - 1) as u32) << 23 };
    f32::from_bits(bits)
}

/// MXFP4: e8m0 exponent byte, 16 bytes of e2m1 nibbles. v = d * level.
fn block_mxfp4(b: &[u8], o: &mut [f32]) {
    let d = e8m0_half(b[0]);
    for j in 0..16 {
        let x = b[1 + j];
        o[j] = d * KVALUES_MXFP4[(x & 0x0f) as usize] as f32;
        o[j + 16] = d * KVALUES_MXFP4[(x >> 4) as usize] as f32;
    }
}

/// Unsigned e4m3 (bias 7) scale, halved for the doubled e2m1 levels (gguf's NVFP4.ue4m3_to_fp32).
#[inline]
fn ue4m3_half(x: u8) -> f32 {
    if x == 0 || x == 0x7f {
        return 0.0;
    }
    let exp = ((x >> 3) & 0x0f) as i32;
    let man = (x & 7) as f32;
    // Every step is exact in f32.
    let raw = if exp == 0 { man * (1.0 / 512.0) } else { (1.0 + man / 8.0) * 2f32.powi(exp - 7) };
    raw * 0.5
}

/// NVFP4: 4 ue4m3 scales, then 4 x 8 bytes of e2m1 nibbles (low nibbles first) per 16 elements.
fn block_nvfp4(b: &[u8], o: &mut [f32]) {
    for s in 0..4 {
        let d = ue4m3_half(b[s]);
        for i in 0..8 {
            let x = b[4 + s * 8 + i];
            o[s * 16 + i] = d * KVALUES_MXFP4[(x & 0x0f) as usize] as f32;
            o[s * 16 + 8 + i] = d * KVALUES_MXFP4[(x >> 4) as usize] as f32;
        }
    }
}

// --- MatMulNBits view -------------------------------------------------------------------------

/// The tensor as blocks of codes for ONNX `com.microsoft::MatMulNBits`: value == (code - zero_point) * scale.
#[derive(Clone, Debug, PartialEq)]
pub struct QBlocks {
    /// 4 or 8: the narrowest MatMulNBits width that holds every code.
    pub bits: u8,
    /// Elements per block: 16 or 32.
    pub block: usize,
    /// One per element, unpacked, in storage order.
    pub codes: Vec<u8>,
    /// One per block.
    pub scales: Vec<f32>,
    /// One per block.
    pub zero_points: Vec<f32>,
    /// True when `(code as f32 - zero_point) * scale` reproduces [`dequantize`] bit for bit for
    /// every element (checked, not assumed).
    pub exact: bool,
}

impl QBlocks {
    /// Element `i` as this form computes it: `(code - zero_point) * scale` in f32.
    pub fn value(&self, i: usize) -> f32 {
        let b = i / self.block;
        (self.codes[i] as f32 - self.zero_points[b]) * self.scales[b]
    }
}

/// One block of the MatMulNBits form before the exactness check.
enum Sub {
    /// value = (code - zp) * scale with an integer zp: exact by construction.
    Sym { zp: f32, scale: f32 },
    /// value = scale * code + offset: zp = -offset / scale (rounded).
    Affine { scale: f32, offset: f32 },
}

/// Fills `codes` (one super-block) and returns its sub-blocks' parameters.
type BlockFn = fn(&[u8], &mut [u8], &mut Vec<Sub>);

/// The block/zero-point form of an integer-coded type, or `None` for float types and types with
/// no such form (IQ grids, TQ, MXFP4, NVFP4, unknown).
pub fn to_blocks(ty: GgmlType, bytes: &[u8], n_elements: usize) -> Result<Option<QBlocks>, GgufError> {
    use GgmlType as T;
    let (bits, block, f): (u8, usize, BlockFn) = match ty {
        T::Q4_0 => (4, 32, |b, c, s| {
            for j in 0..16 {
                c[j] = b[2 + j] & 0x0f;
                c[j + 16] = b[2 + j] >> 4;
            }
            s.push(Sub::Sym { zp: 8.0, scale: f16_at(b, 0) });
        }),
        T::Q4_1 => (4, 32, |b, c, s| {
            for j in 0..16 {
                c[j] = b[4 + j] & 0x0f;
                c[j + 16] = b[4 + j] >> 4;
            }
            s.push(Sub::Affine { scale: f16_at(b, 0), offset: f16_at(b, 2) });
        }),
        T::Q5_0 => (8, 32, |b, c, s| {
            c.copy_from_slice(&q5_codes(u32_at(b, 2), &b[6..22]));
            s.push(Sub::Sym { zp: 16.0, scale: f16_at(b, 0) });
        }),
        T::Q5_1 => (8, 32, |b, c, s| {
            c.copy_from_slice(&q5_codes(u32_at(b, 4), &b[8..24]));
            s.push(Sub::Affine { scale: f16_at(b, 0), offset: f16_at(b, 2) });
        }),
        T::Q8_0 => (8, 32, |b, c, s| {
            for j in 0..32 {
                c[j] = b[2 + j] ^ 0x80; // q + 128
            }
            s.push(Sub::Sym { zp: 128.0, scale: f16_at(b, 0) });
        }),
        T::Q2_K => (4, 16, |b, c, s| {
            let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
            for (p, v) in c.iter_mut().enumerate() {
                *v = q2k_code(&b[16..80], p);
            }
            for &sc in &b[0..16] {
                s.push(Sub::Affine { scale: d * (sc & 0x0f) as f32, offset: -(dmin * (sc >> 4) as f32) });
            }
        }),
        T::Q3_K => (4, 16, |b, c, s| {
            for (p, v) in c.iter_mut().enumerate() {
                *v = (q3k_code(&b[0..32], &b[32..96], p) + 4) as u8;
            }
            let d = f16_at(b, 108);
            for sc in q3k_scales(&b[96..108]) {
                s.push(Sub::Sym { zp: 4.0, scale: d * sc as f32 });
            }
        }),
        T::Q4_K => (4, 32, |b, c, s| {
            for (p, v) in c.iter_mut().enumerate() {
                *v = q4k_code(&b[16..144], p);
            }
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let (sc, mn) = k4_scale_min(&b[4..16]);
            for j in 0..8 {
                s.push(Sub::Affine { scale: d * sc[j] as f32, offset: -(dmin * mn[j] as f32) });
            }
        }),
        T::Q5_K => (8, 32, |b, c, s| {
            for (p, v) in c.iter_mut().enumerate() {
                *v = q5k_code(&b[16..48], &b[48..176], p);
            }
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let (sc, mn) = k4_scale_min(&b[4..16]);
            for j in 0..8 {
                s.push(Sub::Affine { scale: d * sc[j] as f32, offset: -(dmin * mn[j] as f32) });
            }
        }),
        T::Q6_K => (8, 16, |b, c, s| {
            for (p, v) in c.iter_mut().enumerate() {
                *v = q6k_code(&b[0..128], &b[128..192], p);
            }
            let d = f16_at(b, 208);
            for &sc in &b[192..208] {
                s.push(Sub::Sym { zp: 32.0, scale: d * (sc as i8) as f32 });
            }
        }),
        T::Q8_K => (8, 32, |b, c, s| {
            for j in 0..QK_K {
                c[j] = b[4 + j] ^ 0x80;
            }
            let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            for _ in 0..QK_K / 32 {
                s.push(Sub::Sym { zp: 128.0, scale: d });
            }
        }),
        _ => {
            check_len(ty, bytes, n_elements).or_else(|e| match e {
                GgufError::Unsupported { .. } => Ok(()),
                e => Err(e),
            })?;
            return Ok(None);
        }
    };
    let values = dequantize(ty, bytes, n_elements)?;
    let (bs, ts) = (ty.block_size().unwrap_or(1), ty.type_size().unwrap_or(1));
    let n_blocks = n_elements / block;
    let mut codes = vec![0u8; n_elements];
    let mut scales = vec![0f32; n_blocks];
    let mut zero_points = vec![0f32; n_blocks];
    let subs_per = bs / block;
    // One super-block per item; `exact` is the conjunction over all of them.
    let per_chunk = (CHUNK_ELEMS / bs).max(1);
    let work = |b: &[u8], v: &[f32], c: &mut [u8], sc: &mut [f32], zp: &mut [f32]| -> bool {
        let mut exact = true;
        let mut subs = Vec::with_capacity(subs_per);
        for ((((bb, cb), scb), zpb), vb) in b
            .chunks_exact(ts)
            .zip(c.chunks_exact_mut(bs))
            .zip(sc.chunks_exact_mut(subs_per))
            .zip(zp.chunks_exact_mut(subs_per))
            .zip(v.chunks_exact(bs))
        {
            subs.clear();
            f(bb, cb, &mut subs);
            for (k, sub) in subs.iter().enumerate() {
                let (cs, vs) = (&mut cb[k * block..(k + 1) * block], &vb[k * block..(k + 1) * block]);
                let (z, s) = match *sub {
                    Sub::Sym { zp, scale } => (zp, scale),
                    Sub::Affine { scale, offset } => {
                        if scale == 0.0 {
                            // A zero scale makes the whole block one value: code 1, zp 0, scale = that value.
                            cs.fill(1);
                            (0.0, vs[0])
                        } else {
                            (-offset / scale, scale)
                        }
                    }
                };
                zpb[k] = z;
                scb[k] = s;
                exact &= cs.iter().zip(vs).all(|(&c, &v)| ((c as f32 - z) * s).to_bits() == v.to_bits());
            }
        }
        exact
    };
    let exact = if n_elements <= CHUNK_ELEMS {
        work(bytes, &values, &mut codes, &mut scales, &mut zero_points)
    } else {
        bytes
            .par_chunks(per_chunk * ts)
            .zip(values.par_chunks(per_chunk * bs))
            .zip(codes.par_chunks_mut(per_chunk * bs))
            .zip(scales.par_chunks_mut(per_chunk * subs_per).zip(zero_points.par_chunks_mut(per_chunk * subs_per)))
            .map(|(((b, v), c), (sc, zp))| work(b, v, c, sc, zp))
            .reduce(|| true, |a, b| a && b)
    };
    Ok(Some(QBlocks { bits, block, codes, scales, zero_points, exact }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn f32_to_f16(x: f32) -> u16 {
        // Round-to-nearest-even for normal f16 values only (the tests use such values).
        let b = x.to_bits();
        let sign = ((b >> 16) & 0x8000) as u16;
        let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
        if x == 0.0 {
            return sign;
        }
        assert!((1..31).contains(&exp), "test helper handles normal halves only");
        let man = b & 0x7f_ffff;
        let mut h = ((exp as u32) << 10) | (man >> 13);
        let rest = man & 0x1fff;
        if rest > 0x1000 || (rest == 0x1000 && (h & 1) == 1) {
            h += 1;
        }
        sign | h as u16
    }

    /// A small deterministic generator (xorshift64*).
    pub(crate) struct Rng(u64);
    impl Rng {
        pub(crate) fn new(seed: u64) -> Rng {
            Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
        }
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| (self.next() >> 56) as u8).collect()
        }
        pub(crate) fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    /// Random blocks of `ty` with every f16 scale field set to a finite value in [0.001, 0.1).
    pub(crate) fn random_blocks(ty: GgmlType, n_blocks: usize, seed: u64) -> Vec<u8> {
        let ts = ty.type_size().unwrap();
        let mut rng = Rng::new(seed);
        let mut b = rng.bytes(n_blocks * ts);
        let f16_fields: &[usize] = match ty {
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::IQ4_NL | GgmlType::IQ4_XS => &[0],
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
            GgmlType::Q2_K => &[80, 82],
            GgmlType::Q3_K => &[108],
            GgmlType::Q6_K => &[208],
            GgmlType::TQ1_0 => &[52],
            GgmlType::TQ2_0 => &[64],
            _ => &[],
        };
        for blk in b.chunks_exact_mut(ts) {
            for &o in f16_fields {
                let v = 0.001 + rng.unit() * 0.099;
                blk[o..o + 2].copy_from_slice(&f32_to_f16(v).to_le_bytes());
            }
            if ty == GgmlType::Q8_K {
                blk[0..4].copy_from_slice(&(0.001 + rng.unit() * 0.099).to_le_bytes());
            }
        }
        b
    }

    #[test]
    fn f16_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(f16_to_f32(0x03ff), 6.097_555e-5);
        assert_eq!(f16_to_f32(0x8000).to_bits(), 0x8000_0000);
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert_eq!(f16_to_f32(0xfc00), f32::NEG_INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        for h in [0x3555u16, 0x1234, 0x0400, 0x5a5a] {
            assert_eq!(f32_to_f16(f16_to_f32(h)), h);
        }
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xc040), -3.0);
    }

    #[test]
    fn known_blocks() {
        // Q4_0: d = 1, nibbles 0..15 -> -8..7.
        let mut b = vec![0u8; 18];
        b[0..2].copy_from_slice(&f32_to_f16(1.0).to_le_bytes());
        for j in 0..16 {
            b[2 + j] = (j as u8) | ((15 - j as u8) << 4);
        }
        let v = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
        assert_eq!(v[0], -8.0);
        assert_eq!(v[15], 7.0);
        assert_eq!(v[16], 7.0);
        assert_eq!(v[31], -8.0);
        // Q8_0: d = 0.5.
        let mut b = vec![0u8; 34];
        b[0..2].copy_from_slice(&f32_to_f16(0.5).to_le_bytes());
        b[2] = (-128i8) as u8;
        b[3] = 127;
        let v = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
        assert_eq!((v[0], v[1], v[2]), (-64.0, 63.5, 0.0));
        // Q4_1: d = 2, m = -1.
        let mut b = vec![0u8; 20];
        b[0..2].copy_from_slice(&f32_to_f16(2.0).to_le_bytes());
        b[2..4].copy_from_slice(&f32_to_f16(-1.0).to_le_bytes());
        b[4] = 0x31;
        let v = dequantize(GgmlType::Q4_1, &b, 32).unwrap();
        assert_eq!((v[0], v[16], v[1]), (1.0, 5.0, -1.0));
        // Q5_0: bit 4 of element 0 set via qh.
        let mut b = vec![0u8; 22];
        b[0..2].copy_from_slice(&f32_to_f16(1.0).to_le_bytes());
        b[2] = 1;
        b[6] = 0x0f;
        let v = dequantize(GgmlType::Q5_0, &b, 32).unwrap();
        assert_eq!((v[0], v[1], v[16]), (15.0, -16.0, -16.0));
    }

    #[test]
    fn length_checks() {
        assert!(matches!(dequantize(GgmlType::Q4_0, &[0; 18], 31), Err(GgufError::Data { .. })));
        assert!(matches!(dequantize(GgmlType::Q4_0, &[0; 17], 32), Err(GgufError::Data { .. })));
        assert!(matches!(dequantize(GgmlType::F32, &[0; 5], 1), Err(GgufError::Data { .. })));
        assert!(matches!(dequantize(GgmlType::IQ2_XXS, &[0; 66], 256), Err(GgufError::Unsupported { .. })));
        assert!(matches!(dequantize(GgmlType::Unknown(99), &[], 0), Err(GgufError::Unsupported { id: 99, .. })));
        assert!(dequantize(GgmlType::Q6_K, &[], 0).unwrap().is_empty());
        assert!(to_blocks(GgmlType::Q4_0, &[0; 17], 32).is_err());
        assert_eq!(to_blocks(GgmlType::F32, &[0; 4], 1).unwrap(), None);
        assert!(to_blocks(GgmlType::F32, &[0; 3], 1).is_err());
    }

    #[test]
    fn every_type_dequantizes_random_blocks() {
        for id in 0..64 {
            let ty = GgmlType::from_id(id);
            if !ty.can_dequantize() {
                continue;
            }
            let bs = ty.block_size().unwrap();
            for n_blocks in [1, 3, CHUNK_ELEMS / bs + 5] {
                let b = random_blocks(ty, n_blocks, id as u64);
                let v = dequantize(ty, &b, n_blocks * bs).unwrap();
                assert_eq!(v.len(), n_blocks * bs);
                // The parallel path gives the block-by-block result.
                let mut one = vec![0f32; bs];
                let last = &b[(n_blocks - 1) * ty.type_size().unwrap()..];
                one.copy_from_slice(&dequantize(ty, last, bs).unwrap());
                assert_eq!(&v[(n_blocks - 1) * bs..], &one[..], "{}", ty.name());
            }
        }
    }

    #[test]
    fn q6_k_and_q3_k_scale_layout() {
        // Q6_K: all codes 32 + 1 (value 1 * d * sc), scales s -> element p uses scale p/16.
        let mut b = vec![0u8; 210];
        for x in &mut b[0..128] {
            *x = 0x11; // low nibble 1 in both halves
        }
        for x in &mut b[128..192] {
            *x = 0xaa; // high bits 2 everywhere -> code 1 | 32
        }
        for s in 0..16 {
            b[192 + s] = (s as i8 - 8) as u8;
        }
        b[208..210].copy_from_slice(&f32_to_f16(1.0).to_le_bytes());
        let v = dequantize(GgmlType::Q6_K, &b, 256).unwrap();
        for (p, &x) in v.iter().enumerate() {
            assert_eq!(x, (p / 16) as f32 - 8.0, "element {p}");
        }
        // Q3_K: hmask all set (no -4), codes 0, scales 32 + s -> zero values; codes 1 -> scale.
        let mut b = vec![0u8; 110];
        b[0..32].fill(0xff);
        b[32..96].fill(0x55); // every 2-bit code 1
        // low nibbles: scale s low bits = s; high bits 2 -> +32, so sc - 32 = s.
        for s in 0..8 {
            b[96 + s] = (s as u8) | ((s as u8 + 8) << 4);
        }
        b[104..108].fill(0xaa);
        b[108..110].copy_from_slice(&f32_to_f16(0.5).to_le_bytes());
        let v = dequantize(GgmlType::Q3_K, &b, 256).unwrap();
        for (p, &x) in v.iter().enumerate() {
            assert_eq!(x, 0.5 * (p / 16) as f32, "element {p}");
        }
    }

    #[test]
    fn blocks_reproduce_values() {
        let cases = [
            (GgmlType::Q4_0, 4, 32, true),
            (GgmlType::Q8_0, 8, 32, true),
            (GgmlType::Q5_0, 8, 32, true),
            (GgmlType::Q3_K, 4, 16, true),
            (GgmlType::Q6_K, 8, 16, true),
            (GgmlType::Q8_K, 8, 32, true),
            (GgmlType::Q4_1, 4, 32, false),
            (GgmlType::Q5_1, 8, 32, false),
            (GgmlType::Q2_K, 4, 16, false),
            (GgmlType::Q4_K, 4, 32, false),
            (GgmlType::Q5_K, 8, 32, false),
        ];
        for (ty, bits, block, exact) in cases {
            let bs = ty.block_size().unwrap();
            for n_blocks in [2, CHUNK_ELEMS / bs + 3] {
                let b = random_blocks(ty, n_blocks, 7);
                let n = n_blocks * bs;
                let v = dequantize(ty, &b, n).unwrap();
                let q = to_blocks(ty, &b, n).unwrap().unwrap();
                assert_eq!((q.bits, q.block, q.codes.len(), q.scales.len()), (bits, block, n, n / block), "{ty:?}");
                assert_eq!(q.zero_points.len(), n / block);
                assert!(q.codes.iter().all(|&c| (c as u32) < (1 << bits)), "{ty:?}");
                if exact {
                    assert!(q.exact, "{ty:?} should be exact");
                }
                // Exact or not, the form is within a few ulps of the value.
                let mut all_bitwise = true;
                for (i, &x) in v.iter().enumerate() {
                    let y = q.value(i);
                    all_bitwise &= x.to_bits() == y.to_bits();
                    let tol = 1e-6 * (x.abs() + q.scales[i / block].abs() * 64.0);
                    assert!((x - y).abs() <= tol, "{ty:?} element {i}: {x} vs {y}");
                }
                assert_eq!(q.exact, all_bitwise, "{ty:?}: `exact` must be honest");
            }
        }
    }

    #[test]
    fn blocks_zero_scale_is_exact() {
        // Q4_1 with d = 0: every element equals m.
        let mut b = vec![0u8; 40];
        for (k, blk) in b.chunks_exact_mut(20).enumerate() {
            blk[2..4].copy_from_slice(&f32_to_f16(0.25 * (k as f32 + 1.0)).to_le_bytes());
            for (j, x) in blk[4..].iter_mut().enumerate() {
                *x = j as u8 * 17;
            }
        }
        let q = to_blocks(GgmlType::Q4_1, &b, 64).unwrap().unwrap();
        assert!(q.exact);
        assert_eq!(q.scales, vec![0.25, 0.5]);
        assert_eq!(q.zero_points, vec![0.0, 0.0]);
        assert!(q.codes.iter().all(|&c| c == 1));
        assert_eq!(to_blocks(GgmlType::TQ2_0, &[0; 66], 256).unwrap(), None);
        assert_eq!(to_blocks(GgmlType::IQ2_XXS, &[0; 66], 256).unwrap(), None);
        assert_eq!(to_blocks(GgmlType::Unknown(77), &[0; 66], 256).unwrap(), None);
    }
}
