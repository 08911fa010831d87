//! Target files: built-ins, round trip, error messages.

use optc_cost::{Precision, Target, TargetError, WeightFormat};

#[test]
fn builtins_parse_and_keep_their_meaning() {
    for name in Target::BUILTINS {
        let t = Target::builtin(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&t.name, name);
        assert!(!t.sources.is_empty(), "{name} cites its sources");
        assert!(Target::builtin_toml(name).is_some_and(|s| s.contains('#')), "{name} has a source comment");
        assert_eq!(Target::load(name).unwrap(), t);
    }
    let cpu = Target::cpu();
    assert_eq!(cpu.name, "cpu");
    assert!(cpu.contrib_ops);
    assert_eq!(Target::default(), cpu);
    let npu = Target::builtin("npu").unwrap();
    assert_eq!(npu.tops["int8"], 50.0);
    assert!(npu.quant.pow2_scales);
    assert_eq!(npu.quant.weight_format, WeightFormat::Int4MatMulNBits);
    assert!(npu.runs_op("MatMul") && npu.runs_op("com.microsoft::MatMulNBits") && !npu.runs_op("TopK"));
    assert!(npu.runs_precision(Precision::Int8) && !npu.runs_precision(Precision::F32));
    let gpu = Target::builtin("gpu").unwrap();
    assert_eq!((gpu.tops["f32"], gpu.tops["f16"], gpu.mem_bw_gbs), (15.7, 125.0, 900.0));
    let igpu = Target::builtin("igpu").unwrap();
    assert_eq!(igpu.tops["f16"], 11.88);
    assert!(matches!(Target::builtin("tpu"), Err(TargetError::Unknown { .. })));
    assert!(matches!(Target::load("tpu"), Err(TargetError::Unknown { .. })));
}

#[test]
fn toml_round_trip() {
    for name in Target::BUILTINS {
        let t = Target::builtin(name).unwrap();
        let text = t.to_toml().unwrap();
        let back = Target::from_toml_str(&text, "round-trip").unwrap();
        assert_eq!(back, t, "{name}");
    }
    let dir = std::env::temp_dir().join(format!("optc-cost-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mine.toml");
    let mut t = Target::builtin("igpu").unwrap();
    t.name = "mine".into();
    t.mem_bw_gbs = 256.0;
    std::fs::write(&path, t.to_toml().unwrap()).unwrap();
    assert_eq!(Target::from_path(&path).unwrap(), t);
    assert_eq!(Target::load(path.to_str().unwrap()).unwrap(), t);
    std::fs::remove_dir_all(&dir).ok();
}

const MINIMAL: &str = r#"
name = "tiny"
mem_bw_gbs = 10.0
eff_compute = 0.5
eff_memory = 0.5
[tops]
f32 = 1.0
"#;

#[test]
fn a_minimal_file_takes_defaults() {
    let t = Target::from_toml_str(MINIMAL, "tiny.toml").unwrap();
    assert_eq!(t.native_ops, vec!["*".to_string()]);
    assert!(t.fallback.is_none() && !t.contrib_ops && t.launch_overhead_us == 0.0);
}

fn err(text: &str) -> String {
    Target::from_toml_str(text, "bad.toml").unwrap_err().to_string()
}

#[test]
fn bad_files_name_the_file_and_field() {
    let e = err(&MINIMAL.replace("mem_bw_gbs = 10.0\n", ""));
    assert!(e.contains("bad.toml") && e.contains("mem_bw_gbs"), "{e}");
    let e = err(&MINIMAL.replace("eff_compute = 0.5", "eff_compute = 1.5"));
    assert!(e.contains("bad.toml") && e.contains("`eff_compute`") && e.contains("(0, 1]"), "{e}");
    let e = err(&MINIMAL.replace("f32 = 1.0", "f33 = 1.0"));
    assert!(e.contains("tops.f33") && e.contains("unknown precision"), "{e}");
    let e = err(&MINIMAL.replace("f32 = 1.0", "int8 = 1.0"));
    assert!(e.contains("`tops`") && e.contains("f32"), "{e}");
    let e =
        err(&format!("{MINIMAL}\nbogus = 1\n")
            .replace("[tops]\nf32 = 1.0\n\nbogus = 1", "bogus = 1\n[tops]\nf32 = 1.0"));
    assert!(e.contains("bogus"), "{e}");
    let e = err(&MINIMAL.replace("mem_bw_gbs = 10.0", "mem_bw_gbs = \"fast\""));
    assert!(e.contains("mem_bw_gbs"), "{e}");
    let e = err(&MINIMAL.replace("eff_memory = 0.5", "eff_memory = 0.5\nnative_ops = [\"MatMul\"]"));
    assert!(e.contains("`fallback`") && e.contains("required"), "{e}");
    let e = err(&MINIMAL.replace("eff_memory = 0.5", "eff_memory = 0.5\nnative_dtypes = [\"int7\"]"));
    assert!(e.contains("native_dtypes") && e.contains("int7"), "{e}");
    let e = err("name = ");
    assert!(e.contains("bad.toml"), "{e}");
    match Target::from_path("/nonexistent/dir/t.toml") {
        Err(e @ TargetError::Io { .. }) => assert!(e.to_string().contains("/nonexistent/dir/t.toml")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn weight_pass_parses_and_is_checked() {
    let base = Target::builtin_toml("cpu").unwrap();
    let ok = format!("{base}\n[weight_pass]\neff_stream = 0.2\nresident_mb = 16\nunpack_ns = 0.1\n");
    let t = Target::from_toml_str(&ok, "t.toml").unwrap();
    let w = t.weight_pass.as_ref().unwrap();
    assert_eq!(
        (w.eff_stream, w.resident_mb, w.resident_exp, w.unpack_ns, w.gemv_unpack_ns),
        (0.2, 16.0, 0.0, 0.1, 0.0)
    );
    // Round trip through TOML.
    assert_eq!(Target::from_toml_str(&t.to_toml().unwrap(), "rt").unwrap(), t);
    let bad = format!("{base}\n[weight_pass]\neff_stream = 1.5\n");
    let e = Target::from_toml_str(&bad, "t.toml").unwrap_err().to_string();
    assert!(e.contains("weight_pass.eff_stream"), "{e}");
    let unknown = format!("{base}\n[weight_pass]\nstream = 0.2\n");
    assert!(Target::from_toml_str(&unknown, "t.toml").is_err());
    // The built-in targets leave it out.
    assert!(Target::cpu().weight_pass.is_none());
}
