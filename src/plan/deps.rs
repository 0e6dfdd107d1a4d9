//! The job graph's queue, after cargo's `util/dependency_queue.rs`: each job waits on edges that say what it
//! waits for from another job (`(job, what)`: today the job's image, [`super::Awaited`]); a job becomes ready
//! when each of its edges is satisfied, and is skipped, with everything downstream of it, when a job it waits
//! on fails. Ready jobs come out in the order they became ready (the first ones in plan order). Each job's
//! downstream cost (how many jobs wait on it, directly or through others) is known, for a ranking like
//! cargo's; ready jobs are not ranked by it yet, because that would change which job starts first wherever
//! flavors have different numbers of copies (a behaviour change, left to the issue that measures it). Pure
//! data, no async.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

#[derive(Debug)]
pub struct DependencyQueue<K: Ord + Clone, E: Ord + Clone> {
    /// Jobs not yet ready, with the edges they still wait on.
    waiting: BTreeMap<K, BTreeSet<(K, E)>>,
    /// Per job, the jobs that wait on it.
    dependents: BTreeMap<K, Vec<K>>,
    /// Per job, how many jobs wait on it, directly or through others.
    cost: BTreeMap<K, usize>,
    ready: VecDeque<K>,
}

impl<K: Ord + Clone, E: Ord + Clone> DependencyQueue<K, E> {
    /// `jobs` in plan order, each with its edges: the job it waits on, and what it waits for from it.
    pub fn new(jobs: impl IntoIterator<Item = (K, Vec<(K, E)>)>) -> Self {
        let jobs: Vec<(K, Vec<(K, E)>)> = jobs.into_iter().collect();
        let mut dependents: BTreeMap<K, Vec<K>> = BTreeMap::new();
        for (job, edges) in &jobs {
            for (on, _) in edges {
                dependents.entry(on.clone()).or_default().push(job.clone());
            }
        }
        let mut queue =
            DependencyQueue { waiting: BTreeMap::new(), dependents, cost: BTreeMap::new(), ready: VecDeque::new() };
        for (job, edges) in jobs {
            let cost = queue.count_downstream(&job);
            queue.cost.insert(job.clone(), cost);
            if edges.is_empty() {
                queue.ready.push_back(job);
            } else {
                queue.waiting.insert(job, edges.into_iter().collect());
            }
        }
        queue
    }

    /// How many jobs wait on `job`, directly or through others (each counted once); 0 for a job not queued.
    pub fn downstream_cost(&self, job: &K) -> usize {
        self.cost.get(job).copied().unwrap_or(0)
    }

    fn count_downstream(&self, job: &K) -> usize {
        let mut seen = BTreeSet::new();
        let mut stack = vec![job.clone()];
        while let Some(next) = stack.pop() {
            for dependent in self.dependents.get(&next).into_iter().flatten() {
                if seen.insert(dependent.clone()) {
                    stack.push(dependent.clone());
                }
            }
        }
        seen.len()
    }

    /// The next job that can start, if any.
    pub fn pop_ready(&mut self) -> Option<K> {
        self.ready.pop_front()
    }

    /// `job` gave `what`: the jobs waiting on that edge with nothing else to wait for become ready.
    pub fn satisfied(&mut self, job: &K, what: &E) {
        let edge = (job.clone(), what.clone());
        let Some(dependents) = self.dependents.get(job) else { return };
        let mut now_ready = Vec::new();
        for dependent in dependents {
            if let Some(unmet) = self.waiting.get_mut(dependent) {
                if unmet.remove(&edge) && unmet.is_empty() {
                    now_ready.push(dependent.clone());
                }
            }
        }
        for dependent in now_ready {
            self.waiting.remove(&dependent);
            self.ready.push_back(dependent);
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

    /// What the tests' jobs wait for from each other.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
    enum Gives {
        Image,
        Parameter,
    }

    fn on(job: &'static str) -> (&'static str, Gives) {
        (job, Gives::Image)
    }

    #[test]
    fn dependents_become_ready_when_satisfied() {
        let mut queue =
            DependencyQueue::new([("b1", vec![]), ("c1", vec![on("b1")]), ("c2", vec![on("b1")]), ("b2", vec![])]);
        assert_eq!(queue.pop_ready(), Some("b1"));
        assert_eq!(queue.pop_ready(), Some("b2"));
        assert_eq!(queue.pop_ready(), None);
        assert!(!queue.is_empty(), "c1 and c2 still wait");
        queue.satisfied(&"b1", &Gives::Image);
        assert!(!queue.is_empty(), "c1 and c2 are ready");
        assert_eq!(queue.pop_ready(), Some("c1"));
        assert!(!queue.is_empty(), "c2 is ready");
        assert_eq!(queue.pop_ready(), Some("c2"));
        assert!(queue.is_empty());
    }

    #[test]
    fn each_job_knows_its_downstream_cost_and_ready_jobs_keep_plan_order() {
        // a: nothing waits; b: one copy; c: a chained build with its own copy (2 downstream); d: like a.
        let mut queue = DependencyQueue::new([
            ("a", vec![]),
            ("b", vec![]),
            ("c", vec![]),
            ("d", vec![]),
            ("b-copy", vec![on("b")]),
            ("c-child", vec![on("c")]),
            ("c-child-copy", vec![on("c-child")]),
        ]);
        let costs: Vec<_> = ["a", "b", "c", "d", "c-child"].iter().map(|job| queue.downstream_cost(job)).collect();
        assert_eq!(costs, [0, 1, 2, 0, 1]);
        let order: Vec<_> = std::iter::from_fn(|| queue.pop_ready()).collect();
        assert_eq!(order, ["a", "b", "c", "d"]);
    }

    #[test]
    fn an_edge_is_satisfied_only_by_what_it_waits_for() {
        let mut queue =
            DependencyQueue::new([("b", vec![]), ("c", vec![("b", Gives::Image), ("b", Gives::Parameter)])]);
        queue.pop_ready();
        queue.satisfied(&"b", &Gives::Image);
        assert_eq!(queue.pop_ready(), None, "c also waits for b's parameter");
        queue.satisfied(&"b", &Gives::Image);
        assert_eq!(queue.pop_ready(), None, "the same edge twice satisfies nothing more");
        queue.satisfied(&"b", &Gives::Parameter);
        assert_eq!(queue.pop_ready(), Some("c"));
    }

    #[test]
    fn failure_skips_dependents_transitively_and_nothing_else() {
        let mut queue = DependencyQueue::new([
            ("b1", vec![]),
            ("c1", vec![on("b1")]),
            ("d1", vec![on("c1")]),
            ("b2", vec![]),
            ("c2", vec![on("b2")]),
        ]);
        queue.pop_ready();
        queue.pop_ready();
        let mut skipped = queue.failed(&"b1");
        skipped.sort();
        assert_eq!(skipped, vec!["c1", "d1"]);
        queue.satisfied(&"b2", &Gives::Image);
        assert_eq!(queue.pop_ready(), Some("c2"));
        assert!(queue.is_empty());
    }

    #[test]
    fn a_job_with_two_dependencies_waits_for_both() {
        let mut queue = DependencyQueue::new([("a", vec![]), ("b", vec![]), ("c", vec![on("a"), on("b")])]);
        queue.pop_ready();
        queue.pop_ready();
        queue.satisfied(&"a", &Gives::Image);
        assert_eq!(queue.pop_ready(), None);
        queue.satisfied(&"b", &Gives::Image);
        assert_eq!(queue.pop_ready(), Some("c"));
    }

    #[test]
    fn drain_returns_everything_not_started() {
        let mut queue = DependencyQueue::new([("a", vec![]), ("b", vec![on("a")])]);
        assert_eq!(queue.drain(), vec!["a", "b"]);
        assert!(queue.is_empty());
    }
}
