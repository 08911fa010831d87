//! The pass registry and the plugin trait.

use crate::{Pass, PassError};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Passes by name.
#[derive(Clone, Default)]
pub struct PassRegistry {
    passes: BTreeMap<String, Arc<dyn Pass>>,
}

/// A bundle of passes from outside optc. `register` adds them to a registry.
pub trait Plugin {
    fn name(&self) -> &str;
    fn register(&self, registry: &mut PassRegistry);
}

impl PassRegistry {
    pub fn empty() -> PassRegistry {
        PassRegistry::default()
    }

    /// A registry holding every pass built into optc.
    pub fn with_builtins() -> PassRegistry {
        let mut r = PassRegistry::empty();
        r.register(crate::dce::Dce);
        r.register(crate::cse::Cse);
        r.register(crate::fold::Fold);
        r.register(crate::identity::IdentityElim);
        r.register(crate::shape_fold::ShapeFold);
        r.register(crate::fuse::transpose::TransposeSink);
        r.register(crate::fuse::affine::FuseAffine);
        r.register(crate::fuse::gather::FoldGather);
        r.register(crate::fuse::bias::SinkBias);
        r.register(crate::fuse::pad::FusePad);
        r.register(crate::simplify::Simplify);
        r.register(crate::fuse::norm::FuseNorm);
        r.register(crate::fuse::act::FuseAct);
        r.register(crate::fuse::attention::FuseAttention);
        r.register(crate::fuse::qkv::FuseQkv);
        r.register(crate::quant::w4::QuantW4);
        r.register(crate::quant::w8::QuantW8);
        r.register(crate::prune::depth::PruneDepth);
        r
    }

    /// Adds a pass; a pass with the same name is replaced.
    pub fn register(&mut self, pass: impl Pass + 'static) {
        self.passes.insert(pass.name().to_string(), Arc::new(pass));
    }

    pub fn add_plugin(&mut self, plugin: &dyn Plugin) {
        plugin.register(self);
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn Pass>> {
        self.passes.get(name).cloned()
    }

    /// Like [`PassRegistry::get`], but an unknown name is an error listing the close names.
    pub fn lookup(&self, name: &str) -> Result<Arc<dyn Pass>, PassError> {
        self.get(name).ok_or_else(|| PassError::UnknownPass { name: name.into(), suggestions: self.suggest(name) })
    }

    pub fn passes(&self) -> impl Iterator<Item = &Arc<dyn Pass>> {
        self.passes.values()
    }

    /// Registered names (and combinators) close to `name`.
    pub fn suggest(&self, name: &str) -> Vec<String> {
        let mut scored: Vec<(usize, String)> = self
            .passes
            .keys()
            .map(String::as_str)
            .chain(crate::manager::COMBINATORS.iter().copied())
            .map(|k| (edit_distance(name, k), k.to_string()))
            .filter(|(d, k)| *d <= 2.max(k.len() / 3) || k.starts_with(name) || name.starts_with(k.as_str()))
            .collect();
        scored.sort();
        scored.into_iter().take(3).map(|(_, k)| k).collect()
    }
}

/// Levenshtein distance.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("dce", "dce"), 0);
        assert_eq!(edit_distance("dcee", "dce"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn unknown_names_suggest_close_ones() {
        let r = PassRegistry::with_builtins();
        let e = r.lookup("dcee").err().expect("unknown");
        let msg = e.to_string();
        assert!(msg.contains("unknown pass 'dcee'") && msg.contains("dce"), "{msg}");
        assert_eq!(r.suggest("shapefold"), vec!["shape-fold".to_string()]);
        assert!(r.lookup("zzzzzzzz").err().unwrap().to_string().contains("optc passes"));
    }
}
