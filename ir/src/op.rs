//! Operators. Every standard `ai.onnx` operator is a variant of the closed [`Op`] enum; anything
//! else (other domains such as `com.microsoft`, model-local functions, ops newer than this
//! build) is [`Op::Opaque`] and survives every pass untouched. Attribute types of the common
//! operators are declared once in [`Op::attr_schema`] and checked by the verifier.

use std::fmt;

macro_rules! onnx_ops {
    ($($v:ident),* $(,)?) => {
        /// An operator: a standard ONNX one, or an opaque one kept by domain and type.
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum Op {
            $($v,)*
            Opaque { domain: String, op_type: String },
        }

        impl Op {
            /// Standard ONNX op types known to this build, in alphabetical order.
            pub const STANDARD: &'static [&'static str] = &[$(stringify!($v)),*];

            fn standard(op_type: &str) -> Option<Op> {
                match op_type {
                    $(stringify!($v) => Some(Op::$v),)*
                    _ => None,
                }
            }

            /// The ONNX `op_type` string.
            pub fn op_type(&self) -> &str {
                match self {
                    $(Op::$v => stringify!($v),)*
                    Op::Opaque { op_type, .. } => op_type,
                }
            }
        }
    };
}

onnx_ops! {
    Abs, Acos, Acosh, Add, AffineGrid, And, ArgMax, ArgMin, Asin, Asinh, Atan, Atanh, Attention,
    AveragePool, BatchNormalization, Bernoulli, BitShift, BitwiseAnd, BitwiseNot, BitwiseOr,
    BitwiseXor, BitCast, BlackmanWindow, Cast, CastLike, CausalConvWithState, Ceil, Celu, CenterCropPad, Clip, Col2Im, Compress,
    Concat, ConcatFromSequence, Constant, ConstantOfShape, Conv, ConvInteger, ConvTranspose, Cos,
    Cosh, CumProd, CumSum, DFT, DeformConv, DepthToSpace, DequantizeLinear, Det, Div, Dropout,
    DynamicQuantizeLinear, Einsum, Elu, Equal, Erf, Exp, Expand, EyeLike, Flatten, Floor, GRU,
    Gather, GatherElements, GatherND, Gelu, Gemm, GlobalAveragePool, GlobalLpPool, GlobalMaxPool,
    Greater, GreaterOrEqual, GridSample, GroupNormalization, HammingWindow, HannWindow,
    HardSigmoid, HardSwish, Hardmax, Identity, If, ImageDecoder, InstanceNormalization, IsInf,
    IsNaN, LRN, LSTM, LayerNormalization, LeakyRelu, LinearAttention, Less, LessOrEqual, Log, LogSoftmax, Loop,
    LpNormalization, LpPool, MatMul, MatMulInteger, Max, MaxPool, MaxRoiPool, MaxUnpool, Mean,
    MeanVarianceNormalization, MelWeightMatrix, Min, Mish, Mod, Mul, Multinomial, Neg,
    NegativeLogLikelihoodLoss, NonMaxSuppression, NonZero, Not, OneHot, Optional,
    OptionalGetElement, OptionalHasElement, Or, PRelu, Pad, Pow, QLinearConv, QLinearMatMul,
    QuantizeLinear, RMSNormalization, RNN, RandomNormal, RandomNormalLike, RandomUniform,
    RandomUniformLike, Range, Reciprocal, ReduceL1, ReduceL2, ReduceLogSum, ReduceLogSumExp,
    ReduceMax, ReduceMean, ReduceMin, ReduceProd, ReduceSum, ReduceSumSquare, RegexFullMatch,
    Relu, Reshape, Resize, ReverseSequence, RoiAlign, RotaryEmbedding, Round, STFT, Scan, Scatter,
    ScatterElements, ScatterND, Selu, SequenceAt, SequenceConstruct, SequenceEmpty, SequenceErase,
    SequenceInsert, SequenceLength, SequenceMap, Shape, Shrink, Sigmoid, Sign, Sin, Sinh, Size,
    Slice, Softmax, SoftmaxCrossEntropyLoss, Softplus, Softsign, SpaceToDepth, Split,
    SplitToSequence, Sqrt, Squeeze, StringConcat, StringNormalizer, StringSplit, Sub, Sum, Swish,
    Tan, Tanh, TensorScatter, TfIdfVectorizer, ThresholdedRelu, Tile, TopK, Transpose, Trilu,
    Unique, Unsqueeze, Upsample, Where, Xor,
}

/// The type an attribute of a known operator must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttrKind {
    Float,
    Int,
    String,
    Tensor,
    Graph,
    Floats,
    Ints,
    Strings,
}

impl AttrKind {
    pub fn onnx_type(self) -> i32 {
        match self {
            AttrKind::Float => 1,
            AttrKind::Int => 2,
            AttrKind::String => 3,
            AttrKind::Tensor => 4,
            AttrKind::Graph => 5,
            AttrKind::Floats => 6,
            AttrKind::Ints => 7,
            AttrKind::Strings => 8,
        }
    }
}

impl Op {
    /// The op for a node's `(domain, op_type)`. The default domain is `""` or `"ai.onnx"`.
    pub fn from_onnx(domain: &str, op_type: &str) -> Op {
        if (domain.is_empty() || domain == "ai.onnx")
            && let Some(op) = Op::standard(op_type)
        {
            return op;
        }
        Op::Opaque { domain: domain.to_string(), op_type: op_type.to_string() }
    }

    pub fn is_opaque(&self) -> bool {
        matches!(self, Op::Opaque { .. })
    }

    /// The domain this op belongs to (`""` for standard ops).
    pub fn domain(&self) -> &str {
        match self {
            Op::Opaque { domain, .. } => domain,
            _ => "",
        }
    }

    /// Ops whose attributes hold subgraphs evaluated by the op.
    pub fn has_subgraphs(&self) -> bool {
        matches!(self, Op::If | Op::Loop | Op::Scan | Op::SequenceMap)
    }

    /// Declared attribute types of common standard ops. Attributes not listed are unchecked
    /// (newer opsets add attributes; they are kept either way).
    pub fn attr_schema(&self) -> &'static [(&'static str, AttrKind)] {
        use AttrKind::*;
        match self {
            Op::Conv | Op::ConvInteger => &[
                ("auto_pad", String),
                ("dilations", Ints),
                ("group", Int),
                ("kernel_shape", Ints),
                ("pads", Ints),
                ("strides", Ints),
            ],
            Op::ConvTranspose => &[
                ("auto_pad", String),
                ("dilations", Ints),
                ("group", Int),
                ("kernel_shape", Ints),
                ("output_padding", Ints),
                ("output_shape", Ints),
                ("pads", Ints),
                ("strides", Ints),
            ],
            Op::MaxPool | Op::AveragePool | Op::LpPool => &[
                ("auto_pad", String),
                ("ceil_mode", Int),
                ("count_include_pad", Int),
                ("dilations", Ints),
                ("kernel_shape", Ints),
                ("pads", Ints),
                ("storage_order", Int),
                ("strides", Ints),
                ("p", Int),
            ],
            Op::Gemm => &[("alpha", Float), ("beta", Float), ("transA", Int), ("transB", Int)],
            Op::BatchNormalization => &[("epsilon", Float), ("momentum", Float), ("training_mode", Int)],
            Op::LayerNormalization => &[("axis", Int), ("epsilon", Float), ("stash_type", Int)],
            Op::Transpose => &[("perm", Ints)],
            Op::Concat | Op::Softmax | Op::LogSoftmax | Op::Hardmax | Op::Flatten => &[("axis", Int)],
            Op::Gather | Op::GatherElements => &[("axis", Int)],
            Op::Split => &[("axis", Int), ("num_outputs", Int), ("split", Ints)],
            Op::Squeeze | Op::Unsqueeze => &[("axes", Ints)],
            Op::Cast => &[("saturate", Int), ("to", Int), ("round_mode", String)],
            Op::Reshape => &[("allowzero", Int)],
            Op::Constant => &[
                ("value", Tensor),
                ("value_float", Float),
                ("value_floats", Floats),
                ("value_int", Int),
                ("value_ints", Ints),
                ("value_string", String),
                ("value_strings", Strings),
            ],
            Op::LeakyRelu | Op::Elu | Op::Celu | Op::ThresholdedRelu => &[("alpha", Float)],
            Op::HardSigmoid | Op::Selu => &[("alpha", Float), ("beta", Float), ("gamma", Float)],
            Op::Gelu => &[("approximate", String)],
            Op::ReduceMean
            | Op::ReduceSum
            | Op::ReduceMax
            | Op::ReduceMin
            | Op::ReduceProd
            | Op::ReduceL1
            | Op::ReduceL2
            | Op::ReduceLogSum
            | Op::ReduceLogSumExp
            | Op::ReduceSumSquare => &[("axes", Ints), ("keepdims", Int), ("noop_with_empty_axes", Int)],
            Op::ArgMax | Op::ArgMin => &[("axis", Int), ("keepdims", Int), ("select_last_index", Int)],
            Op::If => &[("then_branch", Graph), ("else_branch", Graph)],
            Op::Loop => &[("body", Graph)],
            Op::Scan => &[
                ("body", Graph),
                ("num_scan_inputs", Int),
                ("scan_input_axes", Ints),
                ("scan_input_directions", Ints),
                ("scan_output_axes", Ints),
                ("scan_output_directions", Ints),
            ],
            Op::QuantizeLinear | Op::DequantizeLinear => {
                &[("axis", Int), ("block_size", Int), ("output_dtype", Int), ("saturate", Int)]
            }
            Op::Resize => &[
                ("antialias", Int),
                ("axes", Ints),
                ("coordinate_transformation_mode", String),
                ("cubic_coeff_a", Float),
                ("exclude_outside", Int),
                ("extrapolation_value", Float),
                ("keep_aspect_ratio_policy", String),
                ("mode", String),
                ("nearest_mode", String),
            ],
            Op::Pad => &[("mode", String)],
            Op::Clip => &[("max", Float), ("min", Float)],
            Op::ConstantOfShape => &[("value", Tensor)],
            _ => &[],
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Opaque { domain, op_type } if !domain.is_empty() => {
                write!(f, "{domain}::{op_type}")
            }
            op => f.write_str(op.op_type()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_ops_round_trip_by_name() {
        for name in Op::STANDARD {
            let op = Op::from_onnx("", name);
            assert!(!op.is_opaque(), "{name}");
            assert_eq!(op.op_type(), *name);
            assert_eq!(Op::from_onnx("ai.onnx", name), op);
        }
        let ms = Op::from_onnx("com.microsoft", "Attention");
        assert!(ms.is_opaque());
        assert_eq!(ms.to_string(), "com.microsoft::Attention");
        assert!(Op::from_onnx("", "NoSuchOp").is_opaque());
    }
}
