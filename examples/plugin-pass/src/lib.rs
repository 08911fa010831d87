//! An out-of-tree optc pass: `strip-docs` removes doc strings from the model, its graphs,
//! nodes and attributes (they can be a large share of small exported models and are never
//! needed at inference). It reaches optc through the [`Plugin`] trait.

use optc::ir::{Graph, Model, NodeId};
use optc::passes::{
    Exactness, OptionSpec, Pass, PassContext, PassError, PassOptions, PassOutcome, PassRegistry, Plugin,
};

pub struct StripDocs;

impl Pass for StripDocs {
    fn name(&self) -> &str {
        "strip-docs"
    }
    fn description(&self) -> &str {
        "remove doc strings from the model, graphs, nodes, attributes and value declarations"
    }
    fn options(&self) -> &[OptionSpec] {
        const OPTS: &[OptionSpec] =
            &[OptionSpec { name: "keep_model", default: "false", help: "keep the model-level doc string" }];
        OPTS
    }
    fn exactness(&self) -> Exactness {
        Exactness::Exact
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext, opts: &PassOptions) -> Result<PassOutcome, PassError> {
        let mut rewrites = 0;
        if !opts.bool("keep_model")? && model.doc_string.take().is_some() {
            rewrites += 1;
        }
        rewrites += strip_graph(&mut model.graph, cx);
        Ok(PassOutcome { rewrites })
    }
}

fn strip_graph(g: &mut Graph, cx: &mut PassContext) -> usize {
    let mut n = 0;
    if g.doc_string.take().is_some() {
        n += 1;
    }
    for d in g.inputs.iter_mut().chain(g.outputs.iter_mut()).chain(g.value_info.iter_mut()) {
        if d.doc_string.take().is_some() {
            n += 1;
        }
    }
    let nodes: Vec<NodeId> = g.nodes().collect();
    for id in nodes {
        let node = g.node_mut(id);
        let has_docs = node.doc_string.is_some() || node.attrs.iter().any(|a| a.doc_string.is_some());
        // Each node stripped is one rewrite against the budget.
        if has_docs {
            if !cx.rewrite() {
                break;
            }
            n += usize::from(node.doc_string.take().is_some());
            for a in &mut node.attrs {
                n += usize::from(a.doc_string.take().is_some());
            }
        }
        for sg in node.subgraphs_mut() {
            n += strip_graph(sg, cx);
        }
    }
    n
}

/// The plugin: everything this crate adds to optc.
pub struct DocsPlugin;

impl Plugin for DocsPlugin {
    fn name(&self) -> &str {
        "docs"
    }
    fn register(&self, registry: &mut PassRegistry) {
        registry.register(StripDocs);
    }
}

/// The registry a driver uses: optc's passes plus this plugin's.
pub fn registry() -> PassRegistry {
    let mut r = PassRegistry::with_builtins();
    r.add_plugin(&DocsPlugin);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use optc::ir::builder::GraphBuilder;
    use optc::ir::{DType, Dim, Op};
    use optc::passes::PassManager;

    fn model_with_docs() -> optc::Model {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DType::F32, vec![Dim::known(2)]).unwrap();
        let i = b.op(Op::Identity, &[x], vec![]).unwrap();
        let y = b.op(Op::Relu, &[i], vec![]).unwrap();
        b.output(y, "y", None).unwrap();
        let mut g = b.finish();
        g.doc_string = Some("a graph".into());
        let nodes: Vec<_> = g.nodes().collect();
        for n in nodes {
            g.node_mut(n).doc_string = Some("exported from somewhere, with a long stack trace".into());
        }
        let mut m = optc::ir::Model::new(g, 17);
        m.doc_string = Some("model".into());
        optc::Model::from_ir(m)
    }

    #[test]
    fn plugin_pass_runs_in_a_pipeline_with_builtins() {
        let mut model = model_with_docs();
        let before = model.to_bytes().unwrap().len();
        let manager = PassManager { registry: registry(), verify_each: true };
        let mut cx = PassContext::new(optc::Target::cpu());
        let report = model.run_with(&manager, "strip-docs(keep_model=true),identity,dce", &mut cx).unwrap();
        assert_eq!(report.runs[0].rewrites, 3, "graph doc + two node docs");
        let ir = model.ir();
        assert_eq!(ir.doc_string.as_deref(), Some("model"));
        assert!(ir.graph.nodes().all(|n| ir.graph.node(n).doc_string.is_none()));
        assert_eq!(ir.graph.node_count(), 1, "identity removed by the built-in pass");
        // The result is still a valid model that optc reads back.
        let bytes = model.to_bytes().unwrap();
        assert!(bytes.len() < before);
        let again = optc::Model::from_bytes(&bytes).unwrap();
        assert!(again.verify().is_ok());
    }

    #[test]
    fn options_are_checked() {
        let manager = PassManager::new(registry());
        let e = manager.check("strip-docs(keep=true)").unwrap_err().to_string();
        assert!(e.contains("keep_model"), "{e}");
        assert!(manager.check("strip-docs").is_ok());
    }
}
