//! A convenience layer for building graphs in code (tests, generated models, passes that emit
//! subgraphs): values get fresh names, single-output ops return their output.

use crate::{Attribute, DType, Decl, Dim, Graph, IrError, NodeSpec, Op, Tensor, Type, ValueId};

pub struct GraphBuilder {
    pub graph: Graph,
    counter: usize,
}

impl GraphBuilder {
    pub fn new(name: &str) -> GraphBuilder {
        GraphBuilder { graph: Graph::new(name), counter: 0 }
    }

    fn fresh(&mut self, base: &str) -> String {
        loop {
            self.counter += 1;
            let name = format!("{base}_{}", self.counter);
            if self.graph.find_value(&name).is_none() {
                return name;
            }
        }
    }

    /// A graph input.
    pub fn input(&mut self, name: &str, dtype: DType, dims: Vec<Dim>) -> Result<ValueId, IrError> {
        let v = self.graph.add_value(name, Some(Type::tensor(dtype, dims)))?;
        self.graph.inputs.push(Decl::new(v));
        Ok(v)
    }

    /// An f32 initializer.
    pub fn init_f32(&mut self, base: &str, dims: &[i64], data: &[f32]) -> Result<ValueId, IrError> {
        let name = self.fresh(base);
        let raw: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.graph.add_initializer(name.clone(), Tensor::from_raw(Some(name), DType::F32, dims.to_vec(), raw.into()))
    }

    /// An i64 initializer.
    pub fn init_i64(&mut self, base: &str, dims: &[i64], data: &[i64]) -> Result<ValueId, IrError> {
        let name = self.fresh(base);
        let raw: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.graph.add_initializer(name.clone(), Tensor::from_raw(Some(name), DType::I64, dims.to_vec(), raw.into()))
    }

    /// Adds a node with `n_out` outputs, named after the op.
    pub fn op_n(
        &mut self,
        op: Op,
        inputs: &[Option<ValueId>],
        attrs: Vec<Attribute>,
        n_out: usize,
    ) -> Result<Vec<ValueId>, IrError> {
        let base = op.op_type().to_lowercase();
        let mut outs = Vec::with_capacity(n_out);
        for _ in 0..n_out {
            let name = self.fresh(&base);
            outs.push(self.graph.add_value(name, None)?);
        }
        let node_name = self.fresh(op.op_type());
        let spec =
            NodeSpec::new(op, inputs.to_vec(), outs.iter().map(|&v| Some(v)).collect()).named(node_name).attrs(attrs);
        self.graph.add_node(spec)?;
        Ok(outs)
    }

    /// Adds a single-output node.
    pub fn op(&mut self, op: Op, inputs: &[ValueId], attrs: Vec<Attribute>) -> Result<ValueId, IrError> {
        let ins: Vec<Option<ValueId>> = inputs.iter().map(|&v| Some(v)).collect();
        Ok(self.op_n(op, &ins, attrs, 1)?[0])
    }

    /// Marks `v` as a graph output, renaming it and declaring its type.
    pub fn output(&mut self, v: ValueId, name: &str, ty: Option<Type>) -> Result<(), IrError> {
        self.graph.rename_value(v, name)?;
        if ty.is_some() {
            self.graph.value_mut(v).ty = ty;
        }
        self.graph.outputs.push(Decl::new(v));
        Ok(())
    }

    pub fn finish(self) -> Graph {
        self.graph
    }
}

/// A small deterministic generator (SplitMix64) for seeded weights.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// `n` values uniform in [-scale, scale).
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
}
