//! Sequential evaluation: run the main graph node by node, stop before a chosen node (a layer),
//! let a pass read the activations and change that layer's weights, and continue with the new
//! weights. Layer-wise methods (GPTQ, SparseGPT) calibrate this way: each layer sees inputs
//! produced by the already-modified layers before it.

use crate::Evaluator;
use crate::error::{EvalError, Result};
use crate::interp::run_node;
use crate::value::{Tensor, Value};
use optc_ir::{NodeId, ValueId};
use std::collections::HashMap;
use std::sync::Arc;

pub struct Stepper<'e, 'm> {
    ev: &'e Evaluator<'m>,
    order: Vec<NodeId>,
    pos: usize,
    env: HashMap<ValueId, Arc<Value>>,
}

impl<'e, 'm> Stepper<'e, 'm> {
    /// Binds `inputs` (by name) and the model's initializers; no node has run yet.
    pub fn new(ev: &'e Evaluator<'m>, inputs: &HashMap<String, Value>) -> Result<Stepper<'e, 'm>> {
        let g = &ev.model.graph;
        let order = g.topo_order().map_err(|_| EvalError::Other("the graph has a cycle".into()))?;
        let mut env: HashMap<ValueId, Arc<Value>> = ev.inits.clone();
        for d in &g.inputs {
            let name = &g.value(d.value).name;
            match inputs.get(name) {
                Some(v) => {
                    env.insert(d.value, Arc::new(v.clone()));
                }
                None if g.value(d.value).init.is_some() => {}
                None => {
                    return Err(EvalError::Input {
                        name: name.clone(),
                        message: "no value given for this graph input".into(),
                    });
                }
            }
        }
        Ok(Stepper { ev, order, pos: 0, env })
    }

    /// The node that runs next.
    pub fn next_node(&self) -> Option<NodeId> {
        self.order.get(self.pos).copied()
    }

    /// Runs the next node.
    pub fn step(&mut self) -> Result<()> {
        let Some(n) = self.next_node() else { return Ok(()) };
        let g = &self.ev.model.graph;
        let outs = run_node(g, n, self.ev.opset, &self.env, None)?;
        for (i, v) in outs.into_iter().enumerate() {
            if let Some(id) = g.node(n).output(i) {
                self.env.insert(id, Arc::new(v));
            }
        }
        self.pos += 1;
        Ok(())
    }

    /// Runs nodes until `stop(next node)` holds (that node does not run) or the graph ends.
    /// Returns the node it stopped before.
    pub fn run_until(&mut self, mut stop: impl FnMut(NodeId) -> bool) -> Result<Option<NodeId>> {
        while let Some(n) = self.next_node() {
            if stop(n) {
                return Ok(Some(n));
            }
            self.step()?;
        }
        Ok(None)
    }

    /// A value computed so far (or an input or initializer), by name.
    pub fn value(&self, name: &str) -> Option<&Value> {
        let v = self.ev.model.graph.find_value(name)?;
        self.env.get(&v).map(|a| a.as_ref())
    }

    /// Replaces an initializer's value for the nodes that have not run yet.
    pub fn set_initializer(&mut self, name: &str, t: Tensor) -> Result<()> {
        let g = &self.ev.model.graph;
        let v = g
            .find_value(name)
            .filter(|&v| g.value(v).init.is_some())
            .ok_or_else(|| EvalError::Other(format!("'{name}' is not an initializer")))?;
        self.env.insert(v, Arc::new(Value::Tensor(t)));
        Ok(())
    }

    /// Runs the rest and returns the outputs in graph order.
    pub fn finish(mut self) -> Result<Vec<(String, Value)>> {
        self.run_until(|_| false)?;
        let g = &self.ev.model.graph;
        g.outputs
            .iter()
            .map(|d| {
                let name = g.value(d.value).name.clone();
                let v = self
                    .env
                    .get(&d.value)
                    .map(|a| (**a).clone())
                    .ok_or_else(|| EvalError::Other(format!("graph output '{name}' was not computed")))?;
                Ok((name, v))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};
    use optc_ir::builder::GraphBuilder;
    use optc_ir::{DType, Dim, Model, Op};

    #[test]
    fn stop_change_weights_and_continue() {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DType::F32, vec![Dim::known(3)]).unwrap();
        let w = b.init_f32("w", &[3], &[1.0, 1.0, 1.0]).unwrap();
        let m = b.op(Op::Mul, &[x, w], vec![]).unwrap();
        let y = b.op(Op::Relu, &[m], vec![]).unwrap();
        b.output(y, "y", None).unwrap();
        let w_name = b.graph.value(w).name.clone();
        let model = Model::new(b.finish(), 17);
        let ev = Evaluator::new(&model).unwrap();
        let xv = Value::Tensor(Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[3]), vec![1.0, -2.0, 3.0]).unwrap()));
        let inputs: HashMap<String, Value> = [("x".to_string(), xv)].into();

        let mut s = Stepper::new(&ev, &inputs).unwrap();
        let g = &model.graph;
        let stopped = s.run_until(|n| g.node(n).op == Op::Mul).unwrap();
        assert_eq!(stopped.map(|n| g.node(n).op.clone()), Some(Op::Mul));
        assert!(s.value("x").is_some());
        let doubled = Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[3]), vec![2.0, 2.0, 2.0]).unwrap());
        s.set_initializer(&w_name, doubled).unwrap();
        let out = s.finish().unwrap();
        assert_eq!(out[0].1.tensor().and_then(|t| t.to_f64_vec()).unwrap(), vec![2.0, 0.0, 6.0]);
        // The evaluator itself is unchanged.
        let plain = ev.run(&inputs).unwrap();
        assert_eq!(plain[0].1.tensor().and_then(|t| t.to_f64_vec()).unwrap(), vec![1.0, 0.0, 3.0]);
    }
}
