//! Runs the real silero VAD model end to end: a top-level `If` on the sample rate whose
//! branches hold the network (convolutions, `LSTM`, nested `If`s reading outer values).
//! Skipped when the model is not in the cache (`scripts/fetch_models.py` fetches it).

use ndarray::{ArrayD, IxDyn};
use optc_eval::{Evaluator, Tensor, Value};
use std::collections::HashMap;
use std::path::PathBuf;

fn model_path() -> PathBuf {
    std::env::var_os("OPTC_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/optc/models"))
        .join("silero_vad.onnx")
}

fn check_outputs(outs: &[(String, Value)], sr: i64) {
    assert_eq!(outs.len(), 2, "silero has two outputs");
    let shapes = [vec![1, 1], vec![2, 1, 128]];
    for ((name, v), want) in outs.iter().zip(shapes) {
        let t = v.tensor().unwrap_or_else(|| panic!("sr={sr}: output {name} is not a tensor"));
        assert_eq!(t.shape(), want, "sr={sr}: shape of output {name}");
        let vals = t.to_f64_vec().unwrap_or_else(|| panic!("sr={sr}: output {name} is not numeric"));
        assert!(vals.iter().all(|x| x.is_finite()), "sr={sr}: output {name} has non-finite values: {vals:?}");
    }
    let p = outs[0].1.tensor().and_then(|t| t.to_f64_vec()).unwrap_or_default()[0];
    assert!((0.0..=1.0).contains(&p), "sr={sr}: speech probability {p} is outside [0, 1]");
}

#[test]
fn silero_vad_runs_end_to_end() {
    let path = model_path();
    if !path.exists() {
        eprintln!("skipping: {} is not there (run scripts/fetch_models.py)", path.display());
        return;
    }
    let model = optc_frontends::load(&path, &Default::default()).expect("load silero_vad.onnx");
    let ev = Evaluator::new(&model).expect("evaluator");
    // The 16 kHz branch takes 512 samples a chunk, the 8 kHz one 256.
    for (sr, n) in [(16000i64, 512usize), (8000, 256)] {
        // Zeros for the first half, a 440 Hz sine for the second.
        let samples: Vec<f32> =
            (0..n)
                .map(|i| {
                    if i < n / 2 {
                        0.0
                    } else {
                        0.5 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / sr as f32).sin()
                    }
                })
                .collect();
        let mut inputs = HashMap::new();
        inputs.insert(
            "input".to_string(),
            Value::Tensor(Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[1, n]), samples).unwrap())),
        );
        inputs.insert("state".to_string(), Value::Tensor(Tensor::F32(ArrayD::zeros(IxDyn(&[2, 1, 128])))));
        inputs.insert("sr".to_string(), Value::Tensor(Tensor::I64(ArrayD::from_elem(IxDyn(&[]), sr))));
        let outs = ev.run(&inputs).unwrap_or_else(|e| panic!("sr={sr}: {e}"));
        check_outputs(&outs, sr);
        // A second chunk fed the returned state still runs and stays finite.
        inputs.insert("state".to_string(), outs[1].1.clone());
        let outs = ev.run(&inputs).unwrap_or_else(|e| panic!("sr={sr}, second chunk: {e}"));
        check_outputs(&outs, sr);
    }
}
