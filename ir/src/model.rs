//! A model: the main graph plus everything around it (opsets, producer, metadata, functions,
//! training info), so that nothing in a file is lost on the way through optc.

use crate::{Graph, RawFields};
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpsetImport {
    pub domain: Option<String>,
    pub version: Option<i64>,
    pub extra: RawFields,
}

impl OpsetImport {
    pub fn new(domain: &str, version: i64) -> OpsetImport {
        OpsetImport { domain: Some(domain.to_string()), version: Some(version), extra: RawFields::default() }
    }
    /// The domain with the default domain spelled `""`.
    pub fn domain_name(&self) -> &str {
        match self.domain.as_deref() {
            None | Some("ai.onnx") => "",
            Some(d) => d,
        }
    }
}

/// A `StringStringEntryProto` (metadata property).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaProp {
    pub key: Option<String>,
    pub value: Option<String>,
    pub extra: RawFields,
}

#[derive(Clone, Debug, Default)]
pub struct Model {
    pub ir_version: Option<i64>,
    pub opset_imports: Vec<OpsetImport>,
    pub producer_name: Option<String>,
    pub producer_version: Option<String>,
    pub domain: Option<String>,
    pub model_version: Option<i64>,
    pub doc_string: Option<String>,
    pub metadata_props: Vec<MetaProp>,
    pub graph: Graph,
    /// False for a file without a `graph` field (kept so such a file round-trips).
    pub has_graph: bool,
    /// Fields not modelled (functions, training info, device configurations, unknown fields).
    pub extra: RawFields,
    /// Where the model was read from, for resolving external data and messages.
    pub source: Option<PathBuf>,
}

impl Model {
    pub fn new(graph: Graph, opset: i64) -> Model {
        Model {
            ir_version: Some(if opset >= 21 { 10 } else { 8 }),
            opset_imports: vec![OpsetImport::new("", opset)],
            producer_name: Some("optc".into()),
            graph,
            has_graph: true,
            ..Default::default()
        }
    }

    /// The imported version of `domain` (`""` or `"ai.onnx"` for the default domain).
    pub fn opset(&self, domain: &str) -> Option<i64> {
        let domain = if domain == "ai.onnx" { "" } else { domain };
        self.opset_imports.iter().find(|o| o.domain_name() == domain).and_then(|o| o.version)
    }
}
