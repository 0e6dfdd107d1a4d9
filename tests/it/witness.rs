//! Witnesses for "before any AWS call": an endpoint that counts every connection made to it (a request need
//! not even be complete to count), and the rule that tells a read-only EC2/STS/KMS action from one that makes
//! or changes something.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// A listener on 127.0.0.1 that accepts and counts every connection, answering nothing. It stops on drop.
pub struct Witness {
    pub endpoint: String,
    connections: Arc<AtomicUsize>,
    stopping: Arc<AtomicBool>,
}

impl Witness {
    pub fn start() -> Witness {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        let (seen, stop) = (Arc::clone(&connections), Arc::clone(&stopping));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                if stream.is_ok() {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Witness { endpoint, connections, stopping }
    }

    /// How many connections were made to it so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        // Wakes the accept loop so that it sees `stopping` and ends, releasing the port.
        self.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.endpoint.trim_start_matches("http://"));
    }
}

/// Whether `action` only reads: `Describe*`, `Get*` and `List*` calls (GetCallerIdentity, DescribeKey, …).
pub fn reads_only(action: &str) -> bool {
    ["Describe", "Get", "List"].iter().any(|prefix| action.starts_with(prefix))
}

/// Asserts that `actions` (as a recording proxy saw them) hold at least one call and none that makes or
/// changes anything.
pub fn assert_only_reads(actions: &[String]) {
    assert!(!actions.is_empty(), "the checks made calls");
    let writes: Vec<&String> = actions.iter().filter(|action| !reads_only(action)).collect();
    assert!(writes.is_empty(), "mutating calls {writes:?} among {actions:?}");
}
