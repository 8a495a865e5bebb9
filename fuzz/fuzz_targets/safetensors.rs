//! A safetensors file: its JSON header, and every tensor read both ways (converted to `f32` and
//! as a weight matrix).
#![no_main]

use libfuzzer_sys::fuzz_target;
use s4c_models::{SafetensorsWeights, WeightSource};

fuzz_target!(|data: &[u8]| {
    let Ok(weights) = SafetensorsWeights::from_bytes(data, "fuzz.safetensors") else {
        return;
    };
    for name in weights.names() {
        let _ = weights.tensor(name);
        let _ = weights.matrix(name);
    }
});
