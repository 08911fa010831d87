//! Raising a model's default opset to 21 (blocked `DequantizeLinear` and int4 need it), where
//! the operators it uses keep their meaning.
//!
//! From opset 13 on, the changes up to 21 that alter what an existing node means are:
//! the `axes` attribute of ReduceMax/Min/Mean/Prod/L1/L2/LogSum/LogSumExp/SumSquare becoming
//! an input (18: rewritten here), RoiAlign's default `coordinate_transformation_mode` (16:
//! written out here), DFT's `axis` becoming an input and GridSample's mode names (20) and
//! GroupNormalization's scale/bias shape (21) (models with those are refused). Models older
//! than opset 13 are refused (Softmax, Split, Squeeze, ReduceSum and more changed there).

use optc_ir::{AttrList, Attribute, Graph, Model, NodeId, Op};

pub const QDQ_OPSET: i64 = 21;

/// Why the model cannot move to opset 21, or `None` when it can.
pub fn upgrade_blocker(model: &Model) -> Option<String> {
    let from = model.opset("").unwrap_or(1);
    if from >= QDQ_OPSET {
        return None;
    }
    if from < 13 {
        return Some(format!("the model imports opset {from}; moving it to {QDQ_OPSET} is only done from 13 on"));
    }
    blocker_in(&model.graph, from)
}

fn blocker_in(g: &Graph, from: i64) -> Option<String> {
    for id in g.nodes() {
        let node = g.node(id);
        let bad = match node.op {
            Op::DFT if from < 20 => true,
            Op::GridSample if from < 20 => true,
            Op::GroupNormalization if from < 21 => true,
            Op::Upsample | Op::Scatter => true,
            _ => false,
        };
        if bad {
            return Some(format!(
                "{} '{}' changes meaning between opset {from} and {QDQ_OPSET}",
                node.op,
                node.display_name()
            ));
        }
        for sg in node.subgraphs() {
            if let Some(why) = blocker_in(sg, from) {
                return Some(why);
            }
        }
    }
    None
}

fn reduce_with_axes_attr(op: &Op) -> bool {
    matches!(
        op,
        Op::ReduceMax
            | Op::ReduceMin
            | Op::ReduceMean
            | Op::ReduceProd
            | Op::ReduceL1
            | Op::ReduceL2
            | Op::ReduceLogSum
            | Op::ReduceLogSumExp
            | Op::ReduceSumSquare
    )
}

/// Moves the model to opset 21 (and IR version 10): call only when [`upgrade_blocker`] says
/// `None`. Returns the number of nodes rewritten on the way.
pub fn upgrade(model: &mut Model) -> usize {
    let from = model.opset("").unwrap_or(1);
    if from >= QDQ_OPSET {
        return 0;
    }
    let n = upgrade_graph(&mut model.graph, from);
    for o in &mut model.opset_imports {
        if o.domain_name().is_empty() {
            o.version = Some(QDQ_OPSET);
        }
    }
    if model.ir_version.is_none_or(|v| v < 10) {
        model.ir_version = Some(10);
    }
    n
}

fn upgrade_graph(g: &mut Graph, from: i64) -> usize {
    let mut n = 0;
    let ids: Vec<NodeId> = g.nodes().collect();
    for id in ids {
        for sg in g.node_mut(id).subgraphs_mut() {
            n += upgrade_graph(sg, from);
        }
        let op = g.node(id).op.clone();
        if from < 18 && reduce_with_axes_attr(&op) {
            let Some(axes) = g.node(id).attrs.get_ints("axes").map(|a| a.to_vec()) else { continue };
            let base = format!("{}_axes", g.node(id).display_name());
            let Some(v) = crate::fuse::add_i64(g, &base, &axes) else { continue };
            g.set_input(id, 1, Some(v));
            g.node_mut(id).attrs.retain(|a| a.name != "axes");
            n += 1;
        } else if op == Op::RoiAlign && from < 16 && g.node(id).attrs.attr("coordinate_transformation_mode").is_none() {
            g.node_mut(id).attrs.push(Attribute::string("coordinate_transformation_mode", "output_half_pixel"));
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use optc_ir::builder::GraphBuilder;
    use optc_ir::{AttrValue, DType, Dim, Type};

    fn has_ints(attrs: &[Attribute], name: &str) -> bool {
        attrs.iter().any(|a| a.name == name && matches!(a.value, AttrValue::Ints(_)))
    }

    #[test]
    fn reduce_axes_move_to_an_input() {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DType::F32, vec![Dim::known(2), Dim::known(3)]).unwrap();
        let y = b.op(Op::ReduceMean, &[x], vec![Attribute::ints("axes", vec![-1])]).unwrap();
        b.output(y, "y", None).unwrap();
        let mut m = Model::new(b.finish(), 17);
        assert_eq!(upgrade_blocker(&m), None);
        assert_eq!(upgrade(&mut m), 1);
        assert_eq!(m.opset(""), Some(21));
        assert_eq!(m.ir_version, Some(10));
        let g = &m.graph;
        let id = g.nodes().next().unwrap();
        assert!(!has_ints(&g.node(id).attrs, "axes"));
        let axes = g.node(id).input(1).and_then(|v| g.const_tensor(v)).and_then(|t| t.to_i64_vec());
        assert_eq!(axes, Some(vec![-1]));
    }

    #[test]
    fn old_or_changed_models_are_refused() {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DType::F32, vec![Dim::known(2)]).unwrap();
        let y = b.op(Op::Relu, &[x], vec![]).unwrap();
        b.output(y, "y", Some(Type::tensor(DType::F32, vec![Dim::known(2)]))).unwrap();
        let g = b.finish();
        assert!(upgrade_blocker(&Model::new(g.clone(), 11)).is_some_and(|w| w.contains("opset 11")));
        assert_eq!(upgrade_blocker(&Model::new(g, 13)), None);
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DType::F32, vec![Dim::known(1)]).unwrap();
        let y = b.op(Op::GroupNormalization, &[x, x, x], vec![]).unwrap();
        b.output(y, "y", None).unwrap();
        assert!(upgrade_blocker(&Model::new(b.finish(), 18)).is_some_and(|w| w.contains("GroupNormalization")));
    }
}
