//! Helpers shared by the tests that compare with reference outputs in JSON.

use burn::backend::Flex;
use burn::tensor::Tensor;
use serde_json::Value;

/// A JSON array of token ids.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// A JSON array of numbers.
pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// The rows of a 2-D tensor.
pub fn rows(t: Tensor<Flex, 2>) -> Vec<Vec<f32>> {
    let [n, v] = t.dims();
    let data = t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    (0..n).map(|i| data[i * v..(i + 1) * v].to_vec()).collect()
}

/// The index of the largest value (the first of equal ones).
pub use s4c_verify::argmax;
