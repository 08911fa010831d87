//! Calibration inputs for passes that run the model: the context's `--calib` data, or seeded
//! random inputs with a warning, filtered to the inputs the model has.

use crate::PassContext;
use optc_eval::Value;
use optc_ir::{DimValue, Model};
use std::collections::HashMap;

/// One calibration run: graph input name to value.
pub type Feed = HashMap<String, Value>;

/// The feeds `pass` calibrates on: `cx.calib` when given, else `runs` seeded random input sets
/// (noted as a warning). Inputs the model does not have are dropped (and noted).
pub fn feeds(model: &Model, cx: &mut PassContext, runs: usize, pass: &str) -> Result<Vec<Feed>, String> {
    let feeds = match cx.calib.as_ref().filter(|c| !c.feeds.is_empty()) {
        Some(c) => c.feeds.clone(),
        None => {
            let (feeds, how) = crate::quant::awq::random_feeds(model, &cx.dims, runs)?;
            cx.note(|| {
                format!(
                    "warning: no calibration data; {pass} calibrates on {} seeded random input set(s) ({how}); \
                     give real inputs (--calib) for meaningful results",
                    feeds.len()
                )
            });
            feeds
        }
    };
    let g = &model.graph;
    let known: Vec<&str> = g.inputs.iter().map(|d| g.value(d.value).name.as_str()).collect();
    let mut dropped: Vec<String> = Vec::new();
    let feeds: Vec<Feed> = feeds
        .into_iter()
        .map(|f| {
            f.into_iter()
                .filter(|(k, _)| {
                    let keep = known.contains(&k.as_str());
                    if !keep && !dropped.contains(k) {
                        dropped.push(k.clone());
                    }
                    keep
                })
                .collect()
        })
        .collect();
    if !dropped.is_empty() {
        dropped.sort();
        cx.note(|| format!("calibration inputs the model does not have are ignored: {}", dropped.join(", ")));
    }
    Ok(feeds)
}

/// `dims` plus the symbolic input dims that `feed` fixes (a `--calib` image of width 320 binds
/// `W` to 320), so that cost predictions use the shapes the model is calibrated on.
pub fn dims_from_feed(model: &Model, feed: Option<&Feed>, dims: &HashMap<String, i64>) -> HashMap<String, i64> {
    let mut out = dims.clone();
    let Some(feed) = feed else { return out };
    let g = &model.graph;
    for d in &g.inputs {
        let v = g.value(d.value);
        let (Some(shape), Some(val)) = (v.ty.as_ref().and_then(|t| t.shape()), feed.get(&v.name)) else { continue };
        let Some(t) = val.tensor() else { continue };
        let actual = t.shape();
        if actual.len() != shape.len() {
            continue;
        }
        for (dim, &n) in shape.iter().zip(&actual) {
            if let DimValue::Sym(s) = &dim.value {
                out.entry(s.clone()).or_insert(n as i64);
            }
        }
    }
    out
}
