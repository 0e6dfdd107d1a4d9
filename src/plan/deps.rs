//! A small dependency queue: jobs become ready when everything they depend on is satisfied, and are
//! skipped when something they depend on fails. Pure data, no async.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

#[derive(Debug)]
pub struct DependencyQueue<K: Ord + Clone> {
    /// Jobs not yet ready, with what they still wait for.
    waiting: BTreeMap<K, BTreeSet<K>>,
    dependents: BTreeMap<K, Vec<K>>,
    ready: VecDeque<K>,
}

impl<K: Ord + Clone> DependencyQueue<K> {
    /// `jobs` in the order ready jobs should start; each with the jobs it depends on.
    pub fn new(jobs: impl IntoIterator<Item = (K, Vec<K>)>) -> Self {
        let mut queue =
            DependencyQueue { waiting: BTreeMap::new(), dependents: BTreeMap::new(), ready: VecDeque::new() };
        for (job, dependencies) in jobs {
            if dependencies.is_empty() {
                queue.ready.push_back(job);
                continue;
            }
            for dependency in &dependencies {
                queue.dependents.entry(dependency.clone()).or_default().push(job.clone());
            }
            queue.waiting.insert(job, dependencies.into_iter().collect());
        }
        queue
    }

    /// The next job that can start, if any.
    pub fn pop_ready(&mut self) -> Option<K> {
        self.ready.pop_front()
    }

    /// Marks `job` as satisfied; its dependents with nothing else to wait for become ready.
    pub fn satisfied(&mut self, job: &K) {
        for dependent in self.dependents.remove(job).unwrap_or_default() {
            let now_ready = self.waiting.get_mut(&dependent).is_some_and(|unmet| {
                unmet.remove(job);
                unmet.is_empty()
            });
            if now_ready {
                self.waiting.remove(&dependent);
                self.ready.push_back(dependent);
            }
        }
    }

    /// Marks `job` as failed; returns every job that can now never run, transitively.
    pub fn failed(&mut self, job: &K) -> Vec<K> {
        let mut skipped = Vec::new();
        let mut stack = vec![job.clone()];
        while let Some(failed) = stack.pop() {
            for dependent in self.dependents.remove(&failed).unwrap_or_default() {
                if self.waiting.remove(&dependent).is_some() {
                    skipped.push(dependent.clone());
                    stack.push(dependent);
                }
            }
        }
        skipped
    }

    /// Removes every job that has not started; returns them (ready ones first).
    pub fn drain(&mut self) -> Vec<K> {
        let mut drained: Vec<K> = self.ready.drain(..).collect();
        drained.extend(std::mem::take(&mut self.waiting).into_keys());
        self.dependents.clear();
        drained
    }

    /// No job is ready or waiting.
    pub fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependents_become_ready_when_satisfied() {
        let mut queue = DependencyQueue::new([("b1", vec![]), ("c1", vec!["b1"]), ("c2", vec!["b1"]), ("b2", vec![])]);
        assert_eq!(queue.pop_ready(), Some("b1"));
        assert_eq!(queue.pop_ready(), Some("b2"));
        assert_eq!(queue.pop_ready(), None);
        assert!(!queue.is_empty(), "c1 and c2 still wait");
        queue.satisfied(&"b1");
        assert!(!queue.is_empty(), "c1 and c2 are ready");
        assert_eq!(queue.pop_ready(), Some("c1"));
        assert!(!queue.is_empty(), "c2 is ready");
        assert_eq!(queue.pop_ready(), Some("c2"));
        assert!(queue.is_empty());
    }

    #[test]
    fn failure_skips_dependents_transitively_and_nothing_else() {
        let mut queue = DependencyQueue::new([
            ("b1", vec![]),
            ("c1", vec!["b1"]),
            ("d1", vec!["c1"]),
            ("b2", vec![]),
            ("c2", vec!["b2"]),
        ]);
        queue.pop_ready();
        queue.pop_ready();
        let mut skipped = queue.failed(&"b1");
        skipped.sort();
        assert_eq!(skipped, vec!["c1", "d1"]);
        queue.satisfied(&"b2");
        assert_eq!(queue.pop_ready(), Some("c2"));
        assert!(queue.is_empty());
    }

    #[test]
    fn a_job_with_two_dependencies_waits_for_both() {
        let mut queue = DependencyQueue::new([("a", vec![]), ("b", vec![]), ("c", vec!["a", "b"])]);
        queue.pop_ready();
        queue.pop_ready();
        queue.satisfied(&"a");
        assert_eq!(queue.pop_ready(), None);
        queue.satisfied(&"b");
        assert_eq!(queue.pop_ready(), Some("c"));
    }

    #[test]
    fn drain_returns_everything_not_started() {
        let mut queue = DependencyQueue::new([("a", vec![]), ("b", vec!["a"])]);
        assert_eq!(queue.drain(), vec!["a", "b"]);
        assert!(queue.is_empty());
    }
}
