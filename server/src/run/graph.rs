//! The project's DAG: models and seeds, edges from `ref()`s, checked for
//! missing refs and cycles, and `--select` over it (`name`, `+name`,
//! `name+`, `+name+`, `tag:x`, `path:dir`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::ProjectError;

/// One node: a model or a seed, and what it refers to.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub path: PathBuf,
    pub seed: bool,
    pub tags: Vec<String>,
    /// Names of the nodes it `ref()`s, deduplicated, in first-use order.
    pub refs: Vec<String>,
}

/// The checked graph.
#[derive(Debug)]
pub struct Graph {
    pub nodes: BTreeMap<String, Node>,
}

impl Graph {
    /// Checks that every ref names a node and that there is no cycle.
    pub fn new(nodes: Vec<Node>) -> Result<Graph, ProjectError> {
        let nodes: BTreeMap<String, Node> =
            nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
        for node in nodes.values() {
            for r in &node.refs {
                if !nodes.contains_key(r) {
                    return Err(ProjectError::MissingRef {
                        path: node.path.clone(),
                        name: r.clone(),
                    });
                }
            }
        }
        let graph = Graph { nodes };
        graph.order()?;
        Ok(graph)
    }

    /// Every node after the nodes it refers to; a cycle is an error naming
    /// its files.
    pub fn order(&self) -> Result<Vec<String>, ProjectError> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Visiting,
            Done,
        }
        let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
        let mut out = Vec::new();
        // Iterative depth-first search: (node, next ref to look at).
        for start in self.nodes.keys() {
            if marks.contains_key(start.as_str()) {
                continue;
            }
            let mut stack: Vec<(&str, usize)> = vec![(start, 0)];
            marks.insert(start, Mark::Visiting);
            while let Some((name, next)) = stack.pop() {
                let node = &self.nodes[name];
                if let Some(r) = node.refs.get(next) {
                    stack.push((name, next + 1));
                    match marks.get(r.as_str()) {
                        Some(Mark::Done) => {}
                        Some(Mark::Visiting) => {
                            let at = stack.iter().position(|(n, _)| *n == r).unwrap_or(0);
                            let files = stack[at..]
                                .iter()
                                .map(|(n, _)| self.nodes[*n].path.display().to_string())
                                .collect::<Vec<_>>();
                            return Err(ProjectError::Cycle(files.join(" -> ")));
                        }
                        None => {
                            marks.insert(r, Mark::Visiting);
                            stack.push((r, 0));
                        }
                    }
                } else {
                    marks.insert(name, Mark::Done);
                    out.push(name.to_string());
                }
            }
        }
        Ok(out)
    }

    /// The nodes `name` depends on, transitively.
    fn ancestors(&self, name: &str, out: &mut BTreeSet<String>) {
        let mut todo = vec![name.to_string()];
        while let Some(n) = todo.pop() {
            for r in &self.nodes[&n].refs {
                if out.insert(r.clone()) {
                    todo.push(r.clone());
                }
            }
        }
    }

    /// The nodes that depend on `name`, transitively.
    fn descendants(&self, name: &str, out: &mut BTreeSet<String>) {
        let mut todo = vec![name.to_string()];
        while let Some(n) = todo.pop() {
            for (other, node) in &self.nodes {
                if node.refs.contains(&n) && out.insert(other.clone()) {
                    todo.push(other.clone());
                }
            }
        }
    }

    /// The nodes `--select` picks (every node when `select` is empty).
    /// Each argument may hold several space-separated selectors; their
    /// union is selected.
    pub fn select(&self, select: &[String]) -> Result<BTreeSet<String>, ProjectError> {
        if select.is_empty() {
            return Ok(self.nodes.keys().cloned().collect());
        }
        let mut out = BTreeSet::new();
        for selector in select.iter().flat_map(|s| s.split_whitespace()) {
            let (up, rest) = match selector.strip_prefix('+') {
                Some(rest) => (true, rest),
                None => (false, selector),
            };
            let (down, core) = match rest.strip_suffix('+') {
                Some(core) => (true, core),
                None => (false, rest),
            };
            let picked: Vec<String> = if let Some(tag) = core.strip_prefix("tag:") {
                self.nodes
                    .values()
                    .filter(|n| n.tags.iter().any(|t| t == tag))
                    .map(|n| n.name.clone())
                    .collect()
            } else if let Some(dir) = core.strip_prefix("path:") {
                self.nodes
                    .values()
                    .filter(|n| n.path.starts_with(dir))
                    .map(|n| n.name.clone())
                    .collect()
            } else if self.nodes.contains_key(core) {
                vec![core.to_string()]
            } else {
                Vec::new()
            };
            if picked.is_empty() {
                return Err(ProjectError::Select(selector.to_string()));
            }
            for name in picked {
                if up {
                    self.ancestors(&name, &mut out);
                }
                if down {
                    self.descendants(&name, &mut out);
                }
                out.insert(name);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, refs: &[&str], tags: &[&str]) -> Node {
        Node {
            name: name.into(),
            path: PathBuf::from(format!("models/{name}.sql")),
            seed: false,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            refs: refs.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn order_selection_cycles_and_missing_refs() {
        let graph = Graph::new(vec![
            node("c", &["b"], &[]),
            node("b", &["a"], &["nightly"]),
            node("a", &[], &[]),
            node("d", &["a"], &[]),
        ])
        .unwrap();
        let order = graph.order().unwrap();
        let at = |n: &str| order.iter().position(|o| o == n).unwrap();
        assert!(at("a") < at("b") && at("b") < at("c") && at("a") < at("d"));
        let names = |s: &[&str]| -> Vec<String> {
            let select: Vec<String> = s.iter().map(|x| x.to_string()).collect();
            graph.select(&select).unwrap().into_iter().collect()
        };
        assert_eq!(names(&["b"]), ["b"]);
        assert_eq!(names(&["+b"]), ["a", "b"]);
        assert_eq!(names(&["b+"]), ["b", "c"]);
        assert_eq!(names(&["a+"]), ["a", "b", "c", "d"]);
        assert_eq!(names(&["tag:nightly d"]), ["b", "d"]);
        assert!(graph.select(&["nope".into()]).is_err());

        let cycle = Graph::new(vec![node("x", &["y"], &[]), node("y", &["x"], &[])]).unwrap_err();
        assert_eq!(
            cycle.to_string(),
            "the models refer to each other in a cycle: models/x.sql -> models/y.sql"
        );
        let missing = Graph::new(vec![node("x", &["ghost"], &[])]).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "models/x.sql: ref('ghost') names no model or seed"
        );
    }
}
