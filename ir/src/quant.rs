//! Storage formats of quantised weights shared by importers and quantisation passes.

/// Packs unpacked codes `[rows, cols]` into MatMulNBits' `B`: `[rows, blocks, block * bits / 8]`
/// bytes, low bits first; a short last block is padded with code 0.
pub fn pack_nbits(codes: &[u8], rows: usize, cols: usize, bits: u8, block: usize) -> Vec<u8> {
    let nb = cols.div_ceil(block);
    let per_byte = 8 / bits as usize;
    let blob = block / per_byte;
    let mut out = vec![0u8; rows * nb * blob];
    for r in 0..rows {
        let row = &codes[r * cols..(r + 1) * cols];
        let dst = &mut out[r * nb * blob..(r + 1) * nb * blob];
        for (c, &code) in row.iter().enumerate() {
            let (bl, j) = (c / block, c % block);
            dst[bl * blob + j / per_byte] |= code << ((j % per_byte) * bits as usize);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_nbits_is_low_bits_first() {
        let codes: Vec<u8> = (0..32).map(|i| (i % 16) as u8).collect();
        let p = pack_nbits(&codes, 1, 32, 4, 32);
        assert_eq!(p.len(), 16);
        assert_eq!(p[0], 0x10);
        assert_eq!(p[1], 0x32);
        let p = pack_nbits(&[1, 2, 3], 1, 3, 8, 16);
        assert_eq!(&p[..4], &[1, 2, 3, 0]);
        let p = pack_nbits(&[1, 2, 3, 0, 1], 1, 5, 2, 16);
        assert_eq!(p[0], 1 | (2 << 2) | (3 << 4));
        assert_eq!(p[1], 1);
    }
}
