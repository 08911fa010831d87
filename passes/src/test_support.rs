//! Helpers shared by the passes' unit tests.

use optc_eval::Value;

/// A float32 evaluator value of shape `dims`.
pub fn f32_value(dims: &[i64], data: &[f32]) -> Value {
    let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    let t = optc_ir::Tensor::from_raw(None, optc_ir::DType::F32, dims.to_vec(), bytes.into());
    Value::Tensor(optc_eval::Tensor::from_ir(&t).expect("a float32 tensor converts"))
}
