//! Witnesses for "before any AWS call": an endpoint that counts every connection made to it (a request need
//! not even be complete to count), and the rule that tells a read-only EC2/STS/KMS action from one that makes
//! or changes something.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A listener on 127.0.0.1 that accepts and counts every connection, answering nothing. It stops on drop.
pub struct Witness {
    pub endpoint: String,
    /// The client port of every connection accepted, in order.
    accepted: Arc<Mutex<Vec<u16>>>,
    /// The client ports of the witness's own sentinel connections (not counted).
    sentinels: Mutex<Vec<u16>>,
    stopping: Arc<AtomicBool>,
}

impl Witness {
    pub fn start() -> Witness {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let (seen, stop) = (Arc::clone(&accepted), Arc::clone(&stopping));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(port) = stream.and_then(|stream| stream.peer_addr()).map(|peer| peer.port()) {
                    seen.lock().unwrap().push(port);
                }
            }
        });
        Witness { endpoint, accepted, sentinels: Mutex::new(Vec::new()), stopping }
    }

    /// How many connections were made to it so far. A connection the kernel completed but the accept loop has
    /// not taken yet counts too: a sentinel connection of its own goes in behind them (the backlog is first in,
    /// first out), and the count is read once the sentinel is accepted.
    pub fn connections(&self) -> usize {
        let sentinel = TcpStream::connect(self.endpoint.trim_start_matches("http://")).unwrap();
        let port = sentinel.local_addr().unwrap().port();
        let mut sentinels = self.sentinels.lock().unwrap();
        sentinels.push(port);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let accepted = self.accepted.lock().unwrap();
            if accepted.contains(&port) {
                return accepted.iter().filter(|port| !sentinels.contains(port)).count();
            }
            drop(accepted);
            assert!(Instant::now() < deadline, "the witness did not accept its sentinel");
            std::thread::sleep(Duration::from_millis(10));
        }
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
