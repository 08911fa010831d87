//! A driver with optc's passes plus this crate's: `optc-plugin-pass-example IN OUT PIPELINE`.

use optc::passes::{PassContext, PassManager};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output, pipeline] = args.as_slice() else {
        anyhow::bail!("usage: {} IN.onnx OUT.onnx PIPELINE   (e.g. strip-docs,identity,dce)", args[0]);
    };
    let manager = PassManager::new(optc_plugin_pass_example::registry());
    let mut model = optc::Model::load(input)?;
    let report = model.run_with(&manager, pipeline, &mut PassContext::new(optc::Target::cpu()))?;
    model.save(output)?;
    for run in &report.runs {
        println!("{:<20} {:>6} rewrites", run.label, run.rewrites);
    }
    Ok(())
}
