//! optc: a compiler-style optimiser for neural-network models.
//!
//! optc reads an ONNX model, lifts it into its own graph IR, runs a pipeline of passes and
//! writes ONNX again. This crate is the library facade; the `optc` binary is a thin layer on it.
//!
//! ```no_run
//! use optc::{Model, Target};
//!
//! # fn main() -> Result<(), optc::Error> {
//! let mut model = Model::load("model.onnx")?;
//! let report = model.run_pipeline("dce,identity", &Target::cpu())?;
//! println!("{} rewrites", report.total_rewrites());
//! model.save("model.opt.onnx")?;
//! # Ok(())
//! # }
//! ```
//!
//! A model can also be built in memory and round-tripped through bytes:
//!
//! ```
//! use optc::ir::{DType, Dim, Graph, Decl, NodeSpec, Op, Type};
//!
//! let mut g = Graph::new("tiny");
//! let x = g.add_value("x", Some(Type::tensor(DType::F32, vec![Dim::sym("n")]))).unwrap();
//! let y = g.add_value("y", Some(Type::tensor(DType::F32, vec![Dim::sym("n")]))).unwrap();
//! let z = g.add_value("z", None).unwrap();
//! g.add_node(NodeSpec::new(Op::Identity, vec![Some(x)], vec![Some(z)])).unwrap();
//! g.add_node(NodeSpec::new(Op::Relu, vec![Some(z)], vec![Some(y)])).unwrap();
//! g.inputs.push(Decl::new(x));
//! g.outputs.push(Decl::new(y));
//! let mut model = optc::Model::from_ir(optc::ir::Model::new(g, 17));
//! model.run_pipeline("identity,dce", &optc::Target::cpu()).unwrap();
//! assert_eq!(model.ir().graph.node_count(), 1);
//! let bytes = model.to_bytes().unwrap();
//! let again = optc::Model::from_bytes(&bytes).unwrap();
//! assert_eq!(again.ir().graph.node_count(), 1);
//! ```
//!
//! Pass authors implement [`passes::Pass`] and add it through a [`passes::Plugin`]; see
//! `examples/plugin-pass` for a complete out-of-tree pass and driver.

pub use optc_backends as backends;
pub use optc_cost as cost;
pub use optc_cost::Target;
pub use optc_eval as eval;
pub use optc_frontends as frontends;
pub use optc_ir as ir;
pub use optc_passes as passes;

pub mod llm;
pub mod zoo;

use optc_backends::{SaveOptions, SaveReport};
use optc_frontends::LoadOptions;
use optc_passes::{PassContext, PassManager, PassRegistry, PipelineReport};
use std::path::Path;
use thiserror::Error;

/// Everything that can go wrong in the library API.
#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Load(#[from] optc_frontends::LoadError),
    #[error(transparent)]
    Save(#[from] optc_backends::SaveError),
    #[error(transparent)]
    Pass(#[from] optc_passes::PassError),
    #[error(transparent)]
    Target(#[from] optc_cost::TargetError),
    /// A model file in another format (GGUF) that could not be imported.
    #[error("{0}")]
    Import(String),
}

impl Error {
    /// The process exit code the CLI uses: 2 for bad input or usage, 1 for internal failures.
    pub fn exit_code(&self) -> i32 {
        use optc_passes::PassError as P;
        match self {
            Error::Load(_) | Error::Target(_) | Error::Import(_) => 2,
            Error::Pass(P::UnknownPass { .. } | P::BadOption { .. } | P::Syntax(_)) => 2,
            Error::Pass(_) => 1,
            Error::Save(optc_backends::SaveError::TooLarge { .. }) => 2,
            Error::Save(_) => 1,
        }
    }
}

/// Whether the file starts with GGUF's magic bytes.
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"GGUF"
}

/// A model loaded into optc's IR.
#[derive(Clone, Debug)]
pub struct Model {
    inner: ir::Model,
}

impl Model {
    /// Reads an ONNX file (memory-mapped; tensor data is not copied).
    pub fn load(path: impl AsRef<Path>) -> Result<Model, Error> {
        Model::load_with(path, &LoadOptions::default())
    }

    /// Reads an ONNX file, or imports a GGUF file (recognised by its magic bytes) with the
    /// default [`ImportOptions`](optc_frontends::llama::gguf::ImportOptions).
    pub fn load_with(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Model, Error> {
        let path = path.as_ref();
        if is_gguf(path) {
            return Model::import_gguf(path, &Default::default());
        }
        Ok(Model { inner: optc_frontends::load(path, opts)? })
    }

    /// Imports the LLaMA-architecture decoder of a GGUF file (see `optc import`).
    pub fn import_gguf(
        path: impl AsRef<Path>,
        opts: &optc_frontends::llama::gguf::ImportOptions,
    ) -> Result<Model, Error> {
        let path = path.as_ref();
        let err = |e: String| Error::Import(format!("{}: {e}", path.display()));
        let g = optc_frontends::gguf::Gguf::open(path).map_err(|e| err(e.to_string()))?;
        let mut inner = optc_frontends::llama::gguf::import(&g, opts).map_err(err)?;
        inner.source = Some(path.to_path_buf());
        Ok(Model { inner })
    }

    /// Reads an ONNX model from memory (external data is not resolved).
    pub fn from_bytes(bytes: &[u8]) -> Result<Model, Error> {
        let b = ir::Bytes::copy_from_slice(bytes);
        Ok(Model { inner: optc_frontends::load_bytes(b, None, &LoadOptions::default())? })
    }

    pub fn from_ir(inner: ir::Model) -> Model {
        Model { inner }
    }

    pub fn ir(&self) -> &ir::Model {
        &self.inner
    }

    pub fn ir_mut(&mut self) -> &mut ir::Model {
        &mut self.inner
    }

    pub fn into_ir(self) -> ir::Model {
        self.inner
    }

    /// Runs a pipeline of built-in passes (`"dce,identity"`, `"fixpoint(identity,dce)"`).
    pub fn run_pipeline(&mut self, pipeline: &str, target: &Target) -> Result<PipelineReport, Error> {
        let manager = PassManager::new(PassRegistry::with_builtins());
        let mut cx = PassContext::new(target.clone());
        Ok(manager.run(&mut self.inner, pipeline, &mut cx)?)
    }

    /// Runs a pipeline with a caller's pass manager (plugins, `verify_each`) and context.
    pub fn run_with(
        &mut self,
        manager: &PassManager,
        pipeline: &str,
        cx: &mut PassContext,
    ) -> Result<PipelineReport, Error> {
        Ok(manager.run(&mut self.inner, pipeline, cx)?)
    }

    /// Writes the model atomically; past 2 GiB tensors go to `<file>.data` automatically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<SaveReport, Error> {
        self.save_with(path, &SaveOptions::default())
    }

    pub fn save_with(&self, path: impl AsRef<Path>, opts: &SaveOptions) -> Result<SaveReport, Error> {
        Ok(optc_backends::save(&self.inner, path.as_ref(), opts)?)
    }

    /// The model as ONNX bytes, everything inline.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        Ok(optc_backends::to_bytes(&self.inner)?)
    }

    /// Checks the IR's invariants.
    pub fn verify(&self) -> Result<(), Vec<ir::verify::Problem>> {
        ir::verify::verify_model(&self.inner)
    }
}
