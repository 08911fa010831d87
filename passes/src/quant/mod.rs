//! Weight quantisation passes.
//!
//! `quant-w4` ([`w4`]) rounds the constant float32 weights of MatMul and Gemm nodes to 4-bit (or,
//! for the gate/up projections of LLaMA MLPs with `gateup=w2`, 2-bit) codes in blocks along K, by
//! round-to-nearest, by AWQ's activation-aware scaling ([`awq`]) or by GPTQ's Hessian-aware
//! rounding ([`gptq`]), and stores them as `com.microsoft::MatMulNBits` or as a blocked int4/uint4
//! `DequantizeLinear` (opset 21) feeding the original node. The block quantiser shared by all of
//! them lives here; it takes the code width (2, 4 or 8 bits).

pub mod awq;
pub mod gptq;
mod opset;
pub mod w4;
pub mod w8;

/// The float model's outputs on one input, kept by a pass whose calibration ran it.
pub(crate) struct Reference {
    pub feed: crate::calib::Feed,
    pub outputs: Vec<Vec<f32>>,
}

/// What every quantiser reports after it ran (`optc opt` prints it after its summary): the
/// quantised model's output error against the float model it came from, measured by the
/// evaluator on one input set (the first calibration input, else a seeded random one), next to
/// LIFE's predicted latency and the weight bytes of both. Nothing is reported when the pass
/// changed nothing; a model the evaluator cannot run is said so instead of an error figure.
///
/// `reference`: the float model's outputs on that input when the pass has them already (its
/// calibration ran it), which saves running it again.
pub(crate) fn report_error(
    before: &optc_ir::Model,
    after: &optc_ir::Model,
    reference: Option<Reference>,
    cx: &mut crate::PassContext,
) {
    use optc_ir::Graph;
    let calibrated = cx.calib.as_ref().is_some_and(|c| !c.feeds.is_empty());
    let what = if calibrated { "the first calibration input" } else { "a seeded random input" };
    let error = match reference {
        Some(r) => Ok(r),
        None => {
            let g = &before.graph;
            let known: Vec<&str> = g.inputs.iter().map(|d| g.value(d.value).name.as_str()).collect();
            let feed = match cx.calib.as_ref().and_then(|c| c.feeds.first()) {
                Some(f) => Ok(f.clone()),
                None => awq::random_feeds(before, &cx.dims, 1).map(|(mut f, _)| f.remove(0)),
            };
            feed.and_then(|mut f| {
                f.retain(|k, _| known.contains(&k.as_str()));
                let feeds = [f];
                let outs = crate::prune::depth::run_all(before, &feeds)?;
                let [f] = feeds;
                Ok(Reference { feed: f, outputs: outs.into_iter().next().unwrap_or_default() })
            })
        }
    }
    .and_then(|r| {
        // The float model's evaluator is gone: hand its memory back before the next one.
        optc_ir::mem::trim_heap();
        let got = crate::prune::depth::run_all(after, std::slice::from_ref(&r.feed))?;
        optc_ir::mem::trim_heap();
        let (rel, cos) = crate::prune::depth::output_error(std::slice::from_ref(&r.outputs), &got);
        Ok((rel, cos, r.feed))
    });
    let predict = |g: &Graph, opset: i64, dims| optc_cost::estimate(g, opset, &cx.target, dims).totals.time_s;
    let (dims, measured) = match &error {
        Ok((rel, cos, feed)) => (
            crate::calib::dims_from_feed(before, Some(feed), &cx.dims),
            format!("output error {rel:.3e} (relative squared), cosine {cos:.5} on {what}"),
        ),
        Err(e) => (cx.dims.clone(), format!("output error not measured ({e})")),
    };
    let t0 = predict(&before.graph, before.opset("").unwrap_or(1), &dims);
    let t1 = predict(&after.graph, after.opset("").unwrap_or(1), &dims);
    let (b0, b1) = (before.graph.param_bytes(), after.graph.param_bytes());
    let target = cx.target.name.clone();
    let mut bound: Vec<String> = dims.iter().map(|(k, v)| format!("{k}={v}")).collect();
    bound.sort();
    let at = if bound.is_empty() { String::new() } else { format!(" at {}", bound.join(",")) };
    cx.report(format!(
        "{measured}; LIFE on '{target}'{at}: {} -> {} predicted, weights {:.2} MB -> {:.2} MB",
        optc_cost::fmt_time(t0),
        optc_cost::fmt_time(t1),
        b0 as f64 / 1e6,
        b1 as f64 / 1e6
    ));
}

/// Bit widths the block quantiser handles.
pub const BITS: [u8; 3] = [2, 4, 8];

/// The largest code of a `bits`-bit block (`2^bits - 1`).
#[inline]
pub fn qmax(bits: u8) -> f32 {
    ((1u32 << bits) - 1) as f32
}

/// The zero point of symmetric `bits`-bit blocks (MatMulNBits' default, `2^(bits-1)`): codes
/// `q + zp`, `q` in `-(zp-1)..=(zp-1)`.
#[inline]
pub fn sym_zp(bits: u8) -> u8 {
    1u8 << (bits - 1)
}

/// The zero point of symmetric 4-bit blocks: codes `q + 8`, `q` in `-7..=7`.
pub const SYM_ZP: u8 = 8;

/// A matrix quantised in blocks along its rows: element `(r, c)` is
/// `(codes[r * cols + c] - zero_points[r * nb + c / block]) * scales[r * nb + c / block]`.
/// For a weight `W [K, N]` the rows are W's columns (MatMulNBits' layout: row `n` holds column
/// `n`), so blocks run along K. The last block of a row may be short.
#[derive(Clone, Debug, PartialEq)]
pub struct Blocks {
    pub rows: usize,
    pub cols: usize,
    pub block: usize,
    pub sym: bool,
    /// Code width: 2, 4 or 8.
    pub bits: u8,
    /// One unsigned `bits`-bit code per element, row-major `[rows, cols]`.
    pub codes: Vec<u8>,
    /// `[rows, nblocks]`.
    pub scales: Vec<f32>,
    /// `[rows, nblocks]`, each `0..=2^bits - 1` (always [`sym_zp`] when symmetric).
    pub zero_points: Vec<u8>,
}

impl Blocks {
    pub fn nblocks(&self) -> usize {
        self.cols.div_ceil(self.block)
    }

    /// The dequantised matrix, row-major `[rows, cols]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let nb = self.nblocks();
        let mut out = vec![0f32; self.rows * self.cols];
        for r in 0..self.rows {
            for c in 0..self.cols {
                let p = r * nb + c / self.block;
                out[r * self.cols + c] =
                    (self.codes[r * self.cols + c] as f32 - self.zero_points[p] as f32) * self.scales[p];
            }
        }
        out
    }

    /// MatMulNBits' `B`: `[rows, nblocks, block * bits / 8]` bytes, low bits first, the last
    /// block padded with code 0 (never read: the kernel stops at K).
    pub fn pack_nbits(&self) -> Vec<u8> {
        optc_ir::quant::pack_nbits(&self.codes, self.rows, self.cols, self.bits, self.block)
    }

    /// MatMulNBits' uint8 `zero_points`: `8 / bits` per byte, low bits first, each row padded to
    /// a whole byte (`[rows * ceil(nblocks * bits / 8)]`).
    pub fn pack_zero_points(&self) -> Vec<u8> {
        let nb = self.nblocks();
        let bits = self.bits as usize;
        let stride = (nb * bits).div_ceil(8);
        let mut out = vec![0u8; self.rows * stride];
        for r in 0..self.rows {
            for b in 0..nb {
                let pos = b * bits;
                out[r * stride + pos / 8] |= self.zero_points[r * nb + b] << (pos % 8);
            }
        }
        out
    }
}

/// Scale and zero point of one 4-bit block. Asymmetric: the range `[min(x, 0), max(x, 0)]` over
/// 16 levels, zero point `round(-min / scale)`; symmetric: `max |x| / 7`, zero point 8. A block of
/// zeros (or one whose scale underflows) gets scale 1 and codes equal to the zero point, so it
/// dequantises to exact zeros.
#[inline]
pub fn block_params(v: &[f32], sym: bool) -> (f32, u8) {
    block_params_bits(v, sym, 1.0, 4)
}

/// [`block_params`] for the range shrunk by `ratio` (AWQ's clipping; values outside saturate).
#[inline]
pub fn block_params_clipped(v: &[f32], sym: bool, ratio: f32) -> (f32, u8) {
    block_params_bits(v, sym, ratio, 4)
}

/// Scale and zero point of one `bits`-bit block with its range shrunk by `ratio`: asymmetric
/// over `2^bits` levels of `[min(x, 0), max(x, 0)]`, or symmetric `max |x| / (zp - 1)` with
/// zero point `zp = 2^(bits-1)` (for 2 bits: codes 1..=3, `q` in -1..=1).
#[inline]
pub fn block_params_bits(v: &[f32], sym: bool, ratio: f32, bits: u8) -> (f32, u8) {
    let qmax = qmax(bits);
    if sym {
        let zp = sym_zp(bits);
        let amax = v.iter().fold(0f32, |m, x| m.max(x.abs())) * ratio;
        let scale = amax / (zp - 1) as f32;
        if scale > 0.0 && scale.is_finite() { (scale, zp) } else { (1.0, zp) }
    } else {
        let (mn, mx) = v.iter().fold((0f32, 0f32), |(a, b), &x| (a.min(x), b.max(x)));
        let scale = (mx - mn) * ratio / qmax;
        if !(scale > 0.0 && scale.is_finite()) {
            return (1.0, 0);
        }
        let zp = (-mn * ratio / scale).round().clamp(0.0, qmax) as u8;
        (scale, zp)
    }
}

/// The 4-bit code of `x` in a block with `scale` and `zp`.
#[inline]
pub fn encode(x: f32, scale: f32, zp: u8, sym: bool) -> u8 {
    encode_bits(x, scale, zp, sym, 4)
}

/// The `bits`-bit code of `x` in a block with `scale` and `zp` (symmetric codes never use 0, so
/// that they stay symmetric around the zero point). Asymmetric codes round `x / scale + zp`,
/// ties upwards, as onnxruntime's MatMulNBits quantiser does (weights dequantised from GGUF
/// blocks often sit exactly between two codes); symmetric ones round `x / scale` half away from
/// zero, keeping `-x` the mirror of `x`.
#[inline]
pub fn encode_bits(x: f32, scale: f32, zp: u8, sym: bool, bits: u8) -> u8 {
    let q = if sym { (x / scale).round() + zp as f32 } else { (x / scale + zp as f32).round() };
    q.clamp(if sym { 1.0 } else { 0.0 }, qmax(bits)) as u8
}

/// Quantises `w` (`[rows, cols]`, row-major) in blocks of `block` consecutive columns.
pub fn quantize_rows(w: &[f32], rows: usize, cols: usize, block: usize, sym: bool) -> Blocks {
    quantize_rows_clipped(w, rows, cols, block, sym, None)
}

/// [`quantize_rows`] with each block's range shrunk by `clip[row * nblocks + block]`.
pub fn quantize_rows_clipped(
    w: &[f32],
    rows: usize,
    cols: usize,
    block: usize,
    sym: bool,
    clip: Option<&[f32]>,
) -> Blocks {
    quantize_rows_bits(w, rows, cols, block, sym, 4, clip)
}

/// [`quantize_rows_clipped`] to `bits`-bit codes (2, 4 or 8).
pub fn quantize_rows_bits(
    w: &[f32],
    rows: usize,
    cols: usize,
    block: usize,
    sym: bool,
    bits: u8,
    clip: Option<&[f32]>,
) -> Blocks {
    let nb = cols.div_ceil(block);
    let mut codes = vec![0u8; rows * cols];
    let mut scales = vec![0f32; rows * nb];
    let mut zero_points = vec![0u8; rows * nb];
    for r in 0..rows {
        for b in 0..nb {
            let (c0, c1) = (b * block, ((b + 1) * block).min(cols));
            let v = &w[r * cols + c0..r * cols + c1];
            let ratio = clip.map_or(1.0, |c| c[r * nb + b]);
            let (scale, zp) = block_params_bits(v, sym, ratio, bits);
            scales[r * nb + b] = scale;
            zero_points[r * nb + b] = zp;
            for (c, &x) in v.iter().enumerate() {
                codes[r * cols + c0 + c] = encode_bits(x, scale, zp, sym, bits);
            }
        }
    }
    Blocks { rows, cols, block, sym, bits, codes, scales, zero_points }
}

/// Quantises and dequantises one 4-bit block into `out` (AWQ's inner loops: no allocation).
#[inline]
pub fn fake_quant_block(v: &[f32], sym: bool, ratio: f32, out: &mut [f32]) {
    fake_quant_block_bits(v, sym, ratio, 4, out)
}

/// [`fake_quant_block`] with `bits`-bit codes.
#[inline]
pub fn fake_quant_block_bits(v: &[f32], sym: bool, ratio: f32, bits: u8, out: &mut [f32]) {
    let (scale, zp) = block_params_bits(v, sym, ratio, bits);
    for (x, y) in v.iter().zip(out.iter_mut()) {
        *y = (encode_bits(*x, scale, zp, sym, bits) as f32 - zp as f32) * scale;
    }
}

/// Quantises and dequantises one row into `out`, block by block (4 bits).
#[inline]
pub fn fake_quant_row(row: &[f32], block: usize, sym: bool, out: &mut [f32]) {
    fake_quant_row_bits(row, block, sym, 4, out)
}

/// [`fake_quant_row`] with `bits`-bit codes.
#[inline]
pub fn fake_quant_row_bits(row: &[f32], block: usize, sym: bool, bits: u8, out: &mut [f32]) {
    for (v, o) in row.chunks(block).zip(out.chunks_mut(block)) {
        fake_quant_block_bits(v, sym, 1.0, bits, o);
    }
}

/// Packs 4-bit codes two per byte, low nibble first (ONNX int4/uint4 tensors).
pub fn pack_int4(codes: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; codes.len().div_ceil(2)];
    for (i, &c) in codes.iter().enumerate() {
        out[i / 2] |= (c & 0x0F) << ((i % 2) * 4);
    }
    out
}

/// A small deterministic generator (SplitMix64) for sampling and tests.
#[derive(Clone, Debug)]
pub(crate) struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    #[cfg(test)]
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    #[cfg(test)]
    pub fn normal(&mut self) -> f32 {
        let (u, v) = (self.unit().max(1e-300), self.unit());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng(seed);
        (0..n).map(|_| r.normal()).collect()
    }

    #[test]
    fn rtn_round_trip_is_within_half_a_step() {
        for &(rows, cols, block) in &[(7, 256, 32), (5, 100, 64), (3, 300, 128)] {
            for sym in [false, true] {
                let w = random(rows * cols, 11 + cols as u64);
                let q = quantize_rows(&w, rows, cols, block, sym);
                assert_eq!(q.scales.len(), rows * cols.div_ceil(block));
                let d = q.dequantize();
                let nb = q.nblocks();
                for r in 0..rows {
                    for c in 0..cols {
                        let s = q.scales[r * nb + c / block];
                        let err = (w[r * cols + c] - d[r * cols + c]).abs();
                        assert!(err <= s * 0.5001 + 1e-7, "({r},{c}) sym={sym}: err {err} > scale/2 = {}", s / 2.0);
                    }
                }
                let mut fq = vec![0f32; cols];
                fake_quant_row(&w[..cols], block, sym, &mut fq);
                assert_eq!(&fq[..], &d[..cols]);
            }
        }
    }

    #[test]
    fn two_and_eight_bit_blocks_round_trip() {
        for bits in [2u8, 8] {
            for &(rows, cols, block) in &[(5, 256, 32), (3, 200, 128)] {
                for sym in [false, true] {
                    let w = random(rows * cols, 40 + cols as u64 + bits as u64);
                    let q = quantize_rows_bits(&w, rows, cols, block, sym, bits, None);
                    assert_eq!(q.bits, bits);
                    let top = qmax(bits) as u8;
                    assert!(q.codes.iter().all(|&c| c <= top && (!sym || c >= 1)), "bits {bits} sym {sym}");
                    assert!(q.zero_points.iter().all(|&z| z <= top));
                    let d = q.dequantize();
                    let nb = q.nblocks();
                    for r in 0..rows {
                        for c in 0..cols {
                            let s = q.scales[r * nb + c / block];
                            let err = (w[r * cols + c] - d[r * cols + c]).abs();
                            assert!(err <= s * 0.5001 + 1e-7, "bits {bits} ({r},{c}) sym={sym}: {err} > {}", s / 2.0);
                        }
                    }
                    // Every level is used somewhere (2 bits: 4 levels, or 3 when symmetric).
                    if bits == 2 {
                        let used: std::collections::BTreeSet<u8> = q.codes.iter().copied().collect();
                        let want: Vec<u8> = if sym { vec![1, 2, 3] } else { vec![0, 1, 2, 3] };
                        assert_eq!(used.into_iter().collect::<Vec<_>>(), want);
                    }
                    let mut fq = vec![0f32; cols];
                    fake_quant_row_bits(&w[..cols], block, sym, bits, &mut fq);
                    assert_eq!(&fq[..], &d[..cols]);
                    // The packed forms decode to the same codes and zero points.
                    let packed = q.pack_nbits();
                    let per = 8 / bits as usize;
                    let blob = block / per;
                    assert_eq!(packed.len(), rows * nb * blob);
                    let zp = q.pack_zero_points();
                    let stride = (nb * bits as usize).div_ceil(8);
                    assert_eq!(zp.len(), rows * stride);
                    let mask = ((1u16 << bits) - 1) as u8;
                    for r in 0..rows {
                        for c in 0..cols {
                            let (b, j) = (c / block, c % block);
                            let byte = packed[(r * nb + b) * blob + j / per];
                            let code = (byte >> ((j % per) * bits as usize)) & mask;
                            assert_eq!(code, q.codes[r * cols + c]);
                        }
                        for b in 0..nb {
                            let pos = b * bits as usize;
                            assert_eq!((zp[r * stride + pos / 8] >> (pos % 8)) & mask, q.zero_points[r * nb + b]);
                        }
                    }
                }
            }
        }
        // Asymmetric 2 bits: [-1, 2] in 4 levels of 1.0 with zero point 1.
        let q = quantize_rows_bits(&[-1.0, 0.0, 1.0, 2.0, 0.4, 0.6], 1, 6, 16, false, 2, None);
        assert_eq!((q.scales[0], q.zero_points[0]), (1.0, 1));
        assert_eq!(q.codes, vec![0, 1, 2, 3, 1, 2]);
        // Symmetric 2 bits: scale max|x|, codes 1..=3 around 2.
        let q = quantize_rows_bits(&[-2.0, 0.9, 1.1, 2.0], 1, 4, 16, true, 2, None);
        assert_eq!((q.scales[0], q.zero_points[0]), (2.0, 2));
        assert_eq!(q.codes, vec![1, 2, 3, 3]);
    }

    #[test]
    fn clipping_shrinks_the_range_and_saturates() {
        let w: Vec<f32> = (0..16).map(|i| i as f32 - 5.0).collect(); // -5 ..= 10
        let q = quantize_rows_clipped(&w, 1, 16, 16, false, Some(&[0.5]));
        assert!((q.scales[0] - 0.5).abs() < 1e-6, "{:?}", q.scales);
        let d = q.dequantize();
        assert!((d[15] - 5.0).abs() < 0.26 && (d[0] + 2.5).abs() < 0.26, "{d:?}");
        assert_eq!(quantize_rows_clipped(&w, 1, 16, 16, true, Some(&[1.0])), quantize_rows(&w, 1, 16, 16, true));
    }

    #[test]
    fn zero_and_constant_blocks() {
        let w = vec![0f32; 64];
        for sym in [false, true] {
            let q = quantize_rows(&w, 1, 64, 32, sym);
            assert!(q.dequantize().iter().all(|&x| x == 0.0));
            assert!(q.scales.iter().all(|&s| s == 1.0));
        }
        // All-positive block: zero is still representable and the max is reached.
        let w: Vec<f32> = (0..32).map(|i| 1.0 + i as f32 / 31.0).collect();
        let q = quantize_rows(&w, 1, 32, 32, false);
        assert_eq!(q.zero_points[0], 0);
        assert!((q.dequantize()[31] - 2.0).abs() <= q.scales[0] / 2.0);
    }

    #[test]
    fn symmetric_codes_are_centred_on_eight() {
        let w: Vec<f32> = vec![-7.0, -3.5, 0.0, 1.0, 7.0, 3.0, -1.0, 0.49];
        let q = quantize_rows(&w, 1, 8, 8, true);
        assert_eq!(q.scales, vec![1.0]);
        assert_eq!(q.zero_points, vec![8]);
        // round half away from zero: -3.5 -> -4
        assert_eq!(q.codes, vec![1, 4, 8, 9, 15, 11, 7, 8]);
        assert!(q.codes.iter().all(|&c| (1..=15).contains(&c)));
    }

    #[test]
    fn asymmetric_zero_point_and_packing() {
        // min -1, max 2: scale 0.2, zp round(5) = 5.
        let w = vec![-1.0f32, 2.0, 0.0, 0.2];
        let q = quantize_rows(&w, 1, 4, 4, false);
        assert!((q.scales[0] - 0.2).abs() < 1e-7);
        assert_eq!(q.zero_points, vec![5]);
        assert_eq!(q.codes, vec![0, 15, 5, 6]);
        assert_eq!(q.pack_nbits(), vec![0xF0, 0x65]);
        // 3 blocks per row -> 2 bytes per row of zero points.
        let q = quantize_rows(&random(2 * 48, 3), 2, 48, 16, false);
        let zp = q.pack_zero_points();
        assert_eq!(zp.len(), 4);
        for r in 0..2 {
            assert_eq!(zp[r * 2] & 0x0F, q.zero_points[r * 3]);
            assert_eq!(zp[r * 2] >> 4, q.zero_points[r * 3 + 1]);
            assert_eq!(zp[r * 2 + 1], q.zero_points[r * 3 + 2]);
        }
        assert_eq!(pack_int4(&[1, 2, 3]), vec![0x21, 0x03]);
    }
}
