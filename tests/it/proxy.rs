//! A fault-injecting, recording HTTP proxy in front of moto: answers chosen requests as EC2 would (errors,
//! states moto never shows, calls moto lacks) and records every request the SDK sent, for tests to assert on.

use std::net::{TcpListener, TcpStream};

/// An EC2 error the proxy answers with instead of forwarding a request.
#[derive(Clone, Copy)]
pub struct Fault {
    pub status: u16,
    pub code: &'static str,
    pub message: &'static str,
}

impl Fault {
    /// EC2's throttling answer.
    pub fn throttle() -> Fault {
        Fault { status: 503, code: "RequestLimitExceeded", message: "Request limit exceeded." }
    }

    fn response(&self) -> String {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message>\
             </Error></Errors><RequestID>fleetbake-test</RequestID></Response>",
            self.code, self.message
        );
        format!(
            "HTTP/1.1 {} Fault\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}",
            self.status,
            body.len()
        )
    }
}

/// One EC2 request as the proxy sees it.
pub struct Request<'a> {
    /// 1-based, across all connections.
    pub number: usize,
    /// `CopyImage`, `DescribeImages`, ….
    pub action: &'a str,
    /// The form-encoded request body.
    pub body: &'a str,
}

/// What the proxy does with a request.
pub enum Answer {
    Forward,
    /// Answer with an EC2 error instead of forwarding.
    Fail(Fault),
    /// Forward, then pass the response body through this before answering.
    Rewrite(fn(String) -> String),
    /// Answer with this body, HTTP 200, instead of forwarding: what EC2 answers to a call moto lacks.
    Reply(&'static str),
}

/// An HTTP proxy in front of moto that can answer chosen requests with EC2 errors, or rewrite moto's
/// answers (to show states moto never shows, such as `pending`).
pub struct FaultProxy {
    pub endpoint: String,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    altered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Every request's action and body, in order.
    recorded: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

type Rule = dyn Fn(&Request) -> Answer + Send + Sync;

impl FaultProxy {
    pub fn start(upstream: &str, rule: impl Fn(&Request) -> Answer + Send + Sync + 'static) -> FaultProxy {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let altered = Arc::new(AtomicUsize::new(0));
        let rule: Arc<Rule> = Arc::new(rule);
        let counter = Arc::clone(&altered);
        let seen = Arc::clone(&requests);
        let recorded = Arc::new(std::sync::Mutex::new(Vec::new()));
        let recording = Arc::clone(&recorded);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let (upstream, requests, altered, rule) =
                    (upstream.clone(), Arc::clone(&requests), Arc::clone(&counter), Arc::clone(&rule));
                let recording = Arc::clone(&recording);
                std::thread::spawn(move || {
                    let _ = proxy_connection(client, &upstream, |head, body| {
                        let body = String::from_utf8_lossy(body);
                        let action = action_of(head, &body);
                        recording.lock().unwrap().push((action.clone(), body.to_string()));
                        let request = Request {
                            number: requests.fetch_add(1, Ordering::SeqCst) + 1,
                            action: &action,
                            body: &body,
                        };
                        let answer = rule(&request);
                        if !matches!(answer, Answer::Forward) {
                            altered.fetch_add(1, Ordering::SeqCst);
                        }
                        answer
                    });
                });
            }
        });
        FaultProxy { endpoint, requests: seen, altered, recorded }
    }

    /// A proxy that forwards everything (and records it).
    pub fn recording(upstream: &str) -> FaultProxy {
        FaultProxy::start(upstream, |_| Answer::Forward)
    }

    /// The bodies of the requests for `action` it has seen, in order (URL-encoded or JSON, as sent).
    pub fn bodies(&self, action: &str) -> Vec<String> {
        let recorded = self.recorded.lock().unwrap();
        recorded.iter().filter(|(seen, _)| seen == action).map(|(_, body)| body.clone()).collect()
    }

    /// The actions of every request it has seen, in order.
    pub fn actions(&self) -> Vec<String> {
        self.recorded.lock().unwrap().iter().map(|(action, _)| action.clone()).collect()
    }

    /// A proxy that answers every `action` request with `fault` and forwards the rest.
    pub fn refusing(upstream: &str, action: &'static str, fault: Fault) -> FaultProxy {
        FaultProxy::start(
            upstream,
            move |request| if request.action == action { Answer::Fail(fault) } else { Answer::Forward },
        )
    }

    /// A proxy that answers the first `action` request with `fault` and forwards everything else.
    pub fn refusing_once(upstream: &str, action: &'static str, fault: Fault) -> FaultProxy {
        let refused = std::sync::atomic::AtomicBool::new(false);
        FaultProxy::start(upstream, move |request| {
            if request.action == action && !refused.swap(true, std::sync::atomic::Ordering::SeqCst) {
                Answer::Fail(fault)
            } else {
                Answer::Forward
            }
        })
    }

    /// How many requests it has seen.
    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many requests were answered with a fault or a rewritten response.
    pub fn altered(&self) -> usize {
        self.altered.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A request's action: `Action=` of a query-protocol body (EC2, STS), else the operation of a JSON protocol's
/// `X-Amz-Target` header (KMS: `TrentService.DescribeKey` → `DescribeKey`).
fn action_of(head: &str, body: &str) -> String {
    if let Some(action) = body.split('&').find_map(|pair| pair.strip_prefix("Action=")) {
        return action.to_string();
    }
    head.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("x-amz-target").then(|| value.trim().rsplit('.').next().unwrap_or("").to_string())
        })
        .unwrap_or_default()
}

/// Serves one client connection request by request (keep-alive), answering each as `decide` says.
fn proxy_connection(
    client: TcpStream,
    upstream: &str,
    mut decide: impl FnMut(&str, &[u8]) -> Answer,
) -> std::io::Result<()> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = Vec::new();
            if reader.read_until(b'\n', &mut line)? == 0 {
                return Ok(());
            }
            let end = line == b"\r\n";
            head.extend_from_slice(&line);
            if end {
                break;
            }
        }
        let head_text = String::from_utf8_lossy(&head).to_string();
        let length = content_length(&head_text).unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let rewrite = match decide(&head_text, &body) {
            Answer::Fail(fault) => {
                client.write_all(fault.response().as_bytes())?;
                continue;
            }
            Answer::Reply(body) => {
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                client.write_all(response.as_bytes())?;
                continue;
            }
            Answer::Forward => None,
            Answer::Rewrite(rewrite) => Some(rewrite),
        };
        let mut forwarded = String::new();
        for line in head_text.split("\r\n").filter(|line| !line.is_empty()) {
            if !line.to_ascii_lowercase().starts_with("connection:") {
                forwarded.push_str(line);
                forwarded.push_str("\r\n");
            }
        }
        forwarded.push_str("Connection: close\r\n\r\n");
        let mut server = TcpStream::connect(upstream)?;
        server.write_all(forwarded.as_bytes())?;
        server.write_all(&body)?;
        let mut response = Vec::new();
        server.read_to_end(&mut response)?;
        if let Some(rewrite) = rewrite {
            response = rewrite_response(&response, rewrite);
        }
        client.write_all(&response)?;
        let closes = String::from_utf8_lossy(&response[..response.len().min(2048)])
            .to_ascii_lowercase()
            .contains("connection: close");
        if closes {
            return Ok(());
        }
    }
}

fn content_length(head: &str) -> Option<usize> {
    head.lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
}

/// Applies `rewrite` to a response's body and sets its Content-Length to match.
fn rewrite_response(response: &[u8], rewrite: fn(String) -> String) -> Vec<u8> {
    let text = String::from_utf8_lossy(response).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(content_length(head).is_some(), "the proxy rewrites only responses with a Content-Length");
    let body = rewrite(body.to_string());
    let head: Vec<String> = head
        .split("\r\n")
        .map(|line| {
            if line.to_ascii_lowercase().starts_with("content-length:") {
                format!("Content-Length: {}", body.len())
            } else {
                line.to_string()
            }
        })
        .collect();
    format!("{}\r\n\r\n{body}", head.join("\r\n")).into_bytes()
}
