//! Element types: every ONNX `TensorProto.DataType`, with the facts passes and writers need.

use std::fmt;

/// An ONNX element type. The discriminant is the ONNX enum value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(i32)]
pub enum DType {
    Undefined = 0,
    F32 = 1,
    U8 = 2,
    I8 = 3,
    U16 = 4,
    I16 = 5,
    I32 = 6,
    I64 = 7,
    String = 8,
    Bool = 9,
    F16 = 10,
    F64 = 11,
    U32 = 12,
    U64 = 13,
    C64 = 14,
    C128 = 15,
    BF16 = 16,
    F8E4M3FN = 17,
    F8E4M3FNUZ = 18,
    F8E5M2 = 19,
    F8E5M2FNUZ = 20,
    U4 = 21,
    I4 = 22,
    F4E2M1 = 23,
    F8E8M0 = 24,
    U2 = 25,
    I2 = 26,
}

impl DType {
    pub const ALL: [DType; 27] = [
        DType::Undefined,
        DType::F32,
        DType::U8,
        DType::I8,
        DType::U16,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::String,
        DType::Bool,
        DType::F16,
        DType::F64,
        DType::U32,
        DType::U64,
        DType::C64,
        DType::C128,
        DType::BF16,
        DType::F8E4M3FN,
        DType::F8E4M3FNUZ,
        DType::F8E5M2,
        DType::F8E5M2FNUZ,
        DType::U4,
        DType::I4,
        DType::F4E2M1,
        DType::F8E8M0,
        DType::U2,
        DType::I2,
    ];

    /// The type for an ONNX enum value, `None` for values this version does not know.
    pub fn from_onnx(code: i32) -> Option<DType> {
        usize::try_from(code).ok().and_then(|i| Self::ALL.get(i).copied())
    }

    pub fn onnx_code(self) -> i32 {
        self as i32
    }

    /// Bits per element in packed storage (`raw_data`); `None` for strings and undefined.
    pub fn bits(self) -> Option<u32> {
        use DType::*;
        Some(match self {
            Undefined | String => return None,
            I2 | U2 => 2,
            I4 | U4 | F4E2M1 => 4,
            U8 | I8 | Bool | F8E4M3FN | F8E4M3FNUZ | F8E5M2 | F8E5M2FNUZ | F8E8M0 => 8,
            U16 | I16 | F16 | BF16 => 16,
            F32 | I32 | U32 => 32,
            F64 | I64 | U64 | C64 => 64,
            C128 => 128,
        })
    }

    /// Bytes needed to store `n` elements packed (sub-byte types round up), `None` for strings.
    pub fn storage_bytes(self, n: u64) -> Option<u64> {
        let bits = u64::from(self.bits()?);
        n.checked_mul(bits).map(|b| b.div_ceil(8))
    }

    pub fn is_float(self) -> bool {
        use DType::*;
        matches!(self, F32 | F64 | F16 | BF16 | F8E4M3FN | F8E4M3FNUZ | F8E5M2 | F8E5M2FNUZ | F4E2M1 | F8E8M0)
    }

    pub fn is_int(self) -> bool {
        use DType::*;
        matches!(self, U8 | I8 | U16 | I16 | I32 | I64 | U32 | U64 | U4 | I4 | U2 | I2)
    }

    /// Short name used in the text form and in messages (`f32`, `i64`, `f8e4m3fn`, ...).
    pub fn name(self) -> &'static str {
        use DType::*;
        match self {
            Undefined => "undefined",
            F32 => "f32",
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            I32 => "i32",
            I64 => "i64",
            String => "string",
            Bool => "bool",
            F16 => "f16",
            F64 => "f64",
            U32 => "u32",
            U64 => "u64",
            C64 => "c64",
            C128 => "c128",
            BF16 => "bf16",
            F8E4M3FN => "f8e4m3fn",
            F8E4M3FNUZ => "f8e4m3fnuz",
            F8E5M2 => "f8e5m2",
            F8E5M2FNUZ => "f8e5m2fnuz",
            U4 => "u4",
            I4 => "i4",
            F4E2M1 => "f4e2m1",
            F8E8M0 => "f8e8m0",
            U2 => "u2",
            I2 => "i2",
        }
    }

    pub fn from_name(s: &str) -> Option<DType> {
        Self::ALL.iter().copied().find(|d| d.name() == s)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for (i, d) in DType::ALL.iter().enumerate() {
            assert_eq!(d.onnx_code(), i as i32);
            assert_eq!(DType::from_onnx(i as i32), Some(*d));
            assert_eq!(DType::from_name(d.name()), Some(*d));
        }
        assert_eq!(DType::from_onnx(27), None);
        assert_eq!(DType::from_onnx(-1), None);
    }

    #[test]
    fn packed_sizes() {
        assert_eq!(DType::I4.storage_bytes(3), Some(2));
        assert_eq!(DType::U2.storage_bytes(5), Some(2));
        assert_eq!(DType::F32.storage_bytes(3), Some(12));
        assert_eq!(DType::String.storage_bytes(3), None);
    }
}
