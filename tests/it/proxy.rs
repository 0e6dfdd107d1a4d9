//! A fault-injecting, recording HTTP proxy in front of moto: answers chosen requests as EC2 would (errors,
//! states moto never shows, calls moto lacks) and records every request the SDK sent, for tests to assert on.
//! With an [`Ec2Model`] it also behaves as EC2 does where moto does not: it honours `ClientToken` (moto
//! ignores it) and keeps a new resource unknown to other calls for a while (EC2's eventual consistency).
//! Always: snapshot `TagSpecification`s of CreateImage and CopyImage, which moto refuses (HTTP 500) or ignores,
//! are recorded as sent, taken out of what moto gets, and applied to the new image's snapshots once moto has
//! made it ([`SnapshotTags`]), so the snapshots carry them as on EC2.

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// The region it is signed for (`us-west-2`; empty when unsigned).
    pub region: &'a str,
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
    /// Forward, then pass the response body through this closure (one that needs state or the request).
    RewriteWith(Rewriter),
    /// Forward (the call takes effect), then close the connection without answering: an answer lost on the way.
    ForwardThenDrop,
    /// Forward (the call takes effect), then answer with this error instead of the result.
    ForwardThenFail(Fault),
    /// Close the connection without forwarding or answering: a connection dropped before the call got through.
    Drop,
    /// Forward (the call takes effect), then never answer: hold the connection until the client gives up and
    /// closes it (at most [`STALL`]).
    ForwardThenStall,
    /// Answer with this JSON body and HTTP status instead of forwarding (a JSON-protocol service: SSM).
    Json(u16, String),
}

/// How long [`Answer::ForwardThenStall`] holds a connection the client does not close.
pub const STALL: Duration = Duration::from_secs(150);

/// What the proxy does as EC2 does and moto does not. Off by default ([`FaultProxy::start`]).
#[derive(Clone, Copy, Default)]
pub struct Ec2Model {
    /// "Ensuring idempotency in Amazon EC2 API requests": a call repeated with the same `ClientToken` and the same
    /// parameters returns the first call's result and creates nothing; the same token with other parameters is
    /// `IdempotentParameterMismatch`. moto ignores tokens (each repeat creates again).
    pub client_tokens: bool,
    /// "Eventual consistency in the Amazon EC2 API": for this long after the create that returned it, a new key
    /// pair, security group, instance or image is unknown to other calls. Describes by filter leave it out;
    /// describes by id and every other call naming it answer its kind's `*.NotFound` code.
    pub consistency_lag: Option<Duration>,
    /// An AMI name is unique per account and region: CreateImage or CopyImage naming one in use answers
    /// `InvalidAMIName.Duplicate` (CreateImage API reference); moto allows duplicates. A lost CreateImage
    /// answer, repeated, meets this.
    pub image_names: bool,
}

impl Ec2Model {
    /// Both: client tokens honoured, and new resources unknown for `lag`.
    pub fn strict(lag: Duration) -> Ec2Model {
        Ec2Model { client_tokens: true, consistency_lag: Some(lag), image_names: true }
    }
}

/// An answer the [`Ec2Model`] gave instead of moto's: which action, and what (`InvalidGroup.NotFound`,
/// `omitted ami-…`, `replayed`).
#[derive(Clone, Debug)]
pub struct Modelled {
    pub action: String,
    pub answer: String,
}

/// An HTTP proxy in front of moto that can answer chosen requests with EC2 errors, or rewrite moto's
/// answers (to show states moto never shows, such as `pending`).
pub struct FaultProxy {
    pub endpoint: String,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    altered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Every request's action and body, in order.
    recorded: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    state: Arc<ModelState>,
}

type Rule = dyn Fn(&Request) -> Answer + Send + Sync;

/// The [`Ec2Model`]'s memory: first answers by client token, new resources by when they were made.
#[derive(Default)]
struct ModelState {
    model: Ec2Model,
    /// (action, token) → (the first request's body, moto's raw response to it).
    tokens: Mutex<HashMap<(String, String), FirstAnswer>>,
    /// A new resource's id (or key pair name) → its kind and when its create answered.
    fresh: Mutex<HashMap<String, (Kind, Instant)>>,
    /// (region, AMI name) → the image that holds it.
    image_names: Mutex<HashMap<(String, String), String>>,
    modelled: Mutex<Vec<Modelled>>,
}

/// A client token's first request body and moto's raw response to it.
type FirstAnswer = (String, Vec<u8>);

/// A rewrite of a response body.
type Rewriter = Box<dyn FnOnce(String) -> String + Send>;

/// The kinds of resource whose ids the consistency model keeps unknown for a while.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    KeyPair,
    SecurityGroup,
    Instance,
    Image,
}

impl Kind {
    /// The create action that makes one, and the element of its answer that holds the new id.
    const CREATES: [(&'static str, &'static str, Kind); 5] = [
        ("CreateKeyPair", "keyName", Kind::KeyPair),
        ("CreateSecurityGroup", "groupId", Kind::SecurityGroup),
        ("RunInstances", "instanceId", Kind::Instance),
        ("CreateImage", "imageId", Kind::Image),
        ("CopyImage", "imageId", Kind::Image),
    ];

    /// The code EC2 answers about one it does not know.
    fn not_found(self) -> &'static str {
        match self {
            Kind::KeyPair => "InvalidKeyPair.NotFound",
            Kind::SecurityGroup => "InvalidGroup.NotFound",
            Kind::Instance => "InvalidInstanceID.NotFound",
            Kind::Image => "InvalidAMIID.NotFound",
        }
    }

    /// Whether request parameter `name` can name one (a key pair is named by `KeyName` only: the group and
    /// the tags carry the same text).
    fn named_by(self, name: &str) -> bool {
        self != Kind::KeyPair || name.ends_with("KeyName")
    }
}

impl FaultProxy {
    pub fn start(upstream: &str, rule: impl Fn(&Request) -> Answer + Send + Sync + 'static) -> FaultProxy {
        FaultProxy::start_modelling(upstream, Ec2Model::default(), rule)
    }

    /// [`FaultProxy::start`], answering as EC2 would where `model` says.
    pub fn start_modelling(
        upstream: &str,
        model: Ec2Model,
        rule: impl Fn(&Request) -> Answer + Send + Sync + 'static,
    ) -> FaultProxy {
        let state = Arc::new(ModelState { model, ..ModelState::default() });
        let modelling = Arc::clone(&state);
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
                let state = Arc::clone(&modelling);
                std::thread::spawn(move || {
                    let _ = proxy_connection(client, &upstream, &state, |head, body| {
                        let body = String::from_utf8_lossy(body);
                        let action = action_of(head, &body);
                        recording.lock().unwrap().push((action.clone(), body.to_string()));
                        let request = Request {
                            number: requests.fetch_add(1, Ordering::SeqCst) + 1,
                            action: &action,
                            body: &body,
                            region: &region_of(head),
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
        FaultProxy { endpoint, requests: seen, altered, recorded, state }
    }

    /// The answers the [`Ec2Model`] gave instead of moto's, in order.
    pub fn modelled(&self) -> Vec<Modelled> {
        self.state.modelled.lock().unwrap().clone()
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

    /// The bodies of the requests for `action` it has seen, each with its position among every request seen.
    pub fn positions(&self, action: &str) -> Vec<(usize, String)> {
        let recorded = self.recorded.lock().unwrap();
        let all = recorded.iter().enumerate();
        all.filter(|(_, (seen, _))| seen == action).map(|(at, (_, body))| (at, body.clone())).collect()
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

    /// A proxy that gives `answer()` to every `action` request whose body contains `needle` and forwards the
    /// rest.
    pub fn answering(upstream: &str, action: &'static str, needle: &'static str, answer: fn() -> Answer) -> FaultProxy {
        FaultProxy::start(upstream, move |request| {
            if request.action == action && request.body.contains(needle) {
                answer()
            } else {
                Answer::Forward
            }
        })
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
        self.requests.load(Ordering::SeqCst)
    }

    /// How many requests were answered with a fault or a rewritten response.
    pub fn altered(&self) -> usize {
        self.altered.load(Ordering::SeqCst)
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

/// Serves one client connection request by request (keep-alive), answering each as `decide` says and, where
/// it forwards, as the model says.
fn proxy_connection(
    client: TcpStream,
    upstream: &str,
    state: &ModelState,
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
        let (rewrite, after): (Option<Rewriter>, _) = match decide(&head_text, &body) {
            Answer::Fail(fault) => {
                client.write_all(fault.response().as_bytes())?;
                continue;
            }
            Answer::Reply(body) => {
                client.write_all(ok_response(body).as_bytes())?;
                continue;
            }
            Answer::Json(status, body) => {
                let response = format!(
                    "HTTP/1.1 {status} Answer\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-RequestId: fleetbake-test\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                client.write_all(response.as_bytes())?;
                continue;
            }
            Answer::Drop => return Ok(()),
            Answer::Forward => (None, After::Answer),
            Answer::Rewrite(rewrite) => (Some(Box::new(rewrite)), After::Answer),
            Answer::RewriteWith(rewrite) => (Some(rewrite), After::Answer),
            Answer::ForwardThenDrop => (None, After::Drop),
            Answer::ForwardThenStall => (None, After::Stall),
            Answer::ForwardThenFail(fault) => (None, After::Fail(fault)),
        };
        let text = String::from_utf8_lossy(&body).to_string();
        let action = action_of(&head_text, &text);
        let region = region_of(&head_text);
        let mut response = match state.answer_for(&region, &action, &text) {
            Some(modelled) => modelled,
            None => {
                let snapshot_tags = SnapshotTags::taken_from(&action, &text);
                let sent = snapshot_tags.as_ref().map_or(text.clone(), |taken| taken.rest.clone());
                let mut response = forward(upstream, &head_text, &sent)?;
                if let Some(taken) = snapshot_tags {
                    taken.apply(upstream, &head_text, &response)?;
                }
                state.remember(&region, &action, &text, &mut response);
                response
            }
        };
        match after {
            After::Answer => {}
            After::Drop => return Ok(()),
            After::Stall => {
                // Until the client closes the connection (a read of nothing), or for STALL at most.
                client.set_read_timeout(Some(STALL))?;
                let _ = reader.read(&mut [0; 1]);
                return Ok(());
            }
            After::Fail(fault) => {
                client.write_all(fault.response().as_bytes())?;
                continue;
            }
        }
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

/// What happens to a forwarded call's answer.
enum After {
    /// Passed on (rewritten if asked).
    Answer,
    Drop,
    Stall,
    /// Replaced by this error.
    Fail(Fault),
}

/// The region a SigV4-signed request is for (its credential scope: `Credential=KEY/DATE/REGION/SERVICE/…`).
fn region_of(head: &str) -> String {
    head.split("Credential=").nth(1).and_then(|scope| scope.split('/').nth(2)).unwrap_or_default().to_string()
}

fn ok_response(body: &str) -> String {
    format!("HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

/// A form-encoded body's parameters, decoded.
fn parameters(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, value)| (name.to_string(), percent_decoded(value)))
        .collect()
}

fn percent_decoded(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' if index + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        index += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The text of the first `<element>` of `xml`.
fn element<'a>(xml: &'a str, element: &str) -> Option<&'a str> {
    let open = format!("<{element}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{element}>"))? + start;
    Some(&xml[start..end])
}

/// `xml` with the top-level `<item>`s of its `<set>` that mention one of `ids` left out.
fn omit_items(xml: &str, set: &str, ids: &[String]) -> String {
    let open = format!("<{set}>");
    let Some(start) = xml.find(&open).map(|at| at + open.len()) else { return xml.to_string() };
    let Some(end) = xml.find(&format!("</{set}>")) else { return xml.to_string() };
    let inner = &xml[start..end];
    let mut kept = String::new();
    let (mut depth, mut item_start, mut at) = (0usize, 0usize, 0usize);
    while at < inner.len() {
        if inner[at..].starts_with("<item>") {
            if depth == 0 {
                item_start = at;
            }
            depth += 1;
            at += "<item>".len();
        } else if inner[at..].starts_with("</item>") {
            depth -= 1;
            at += "</item>".len();
            if depth == 0 {
                let item = &inner[item_start..at];
                if !ids.iter().any(|id| item.contains(&format!(">{id}<"))) {
                    kept.push_str(item);
                }
            }
        } else {
            at += inner[at..].chars().next().map_or(1, char::len_utf8);
        }
    }
    format!("{}{kept}{}", &xml[..start], &xml[end..])
}

/// The describes EC2 answers without the items it does not know yet (when asked by filter), and the set in
/// their answer that lists them.
const DESCRIBES: [(&str, &str); 4] = [
    ("DescribeInstances", "reservationSet"),
    ("DescribeImages", "imagesSet"),
    ("DescribeSecurityGroups", "securityGroupInfo"),
    ("DescribeKeyPairs", "keySet"),
];

impl ModelState {
    fn note(&self, action: &str, answer: String) {
        self.modelled.lock().unwrap().push(Modelled { action: action.to_string(), answer });
    }

    /// The new resources `body` names that EC2 would not know yet, with the parameter naming each.
    fn unknown_in(&self, body: &str) -> Vec<(String, String, Kind)> {
        let Some(lag) = self.model.consistency_lag else { return Vec::new() };
        let fresh = self.fresh.lock().unwrap();
        parameters(body)
            .into_iter()
            .filter_map(|(name, value)| {
                let (kind, at) = fresh.get(&value)?;
                (at.elapsed() < lag && kind.named_by(&name)).then_some((name, value, *kind))
            })
            .collect()
    }

    /// What EC2 would answer instead of forwarding, if it differs from what moto would: a repeat of a client
    /// token (the first answer, or a mismatch), or a call naming a resource it does not know yet.
    fn answer_for(&self, region: &str, action: &str, body: &str) -> Option<Vec<u8>> {
        if self.model.client_tokens {
            if let Some(token) = parameters(body).into_iter().find(|(name, _)| name == "ClientToken") {
                let tokens = self.tokens.lock().unwrap();
                if let Some((first, response)) = tokens.get(&(action.to_string(), token.1.clone())) {
                    if first == body {
                        self.note(action, "replayed".into());
                        return Some(response.clone());
                    }
                    self.note(action, "IdempotentParameterMismatch".into());
                    let fault = Fault {
                        status: 400,
                        code: "IdempotentParameterMismatch",
                        message: "The client token was used with different parameters.",
                    };
                    return Some(fault.response().into_bytes());
                }
            }
        }
        if self.model.image_names && (action == "CreateImage" || action == "CopyImage") {
            let name = parameters(body).into_iter().find(|(name, _)| name == "Name").map(|(_, name)| name);
            let names = self.image_names.lock().unwrap();
            if let Some(holder) = name.and_then(|name| names.get(&(region.to_string(), name))) {
                self.note(action, format!("InvalidAMIName.Duplicate {holder}"));
                let fault = Fault {
                    status: 400,
                    code: "InvalidAMIName.Duplicate",
                    message: "AMI name is already in use by an AMI",
                };
                return Some(fault.response().into_bytes());
            }
        }
        let unknown = self.unknown_in(body);
        let (_, id, kind) = unknown.first()?.clone();
        // DeleteKeyPair of a key EC2 does not know yet succeeds and deletes nothing: forwarded, so nothing leaks.
        if action == "DeleteKeyPair" {
            return None;
        }
        let described = DESCRIBES.iter().any(|(describe, _)| *describe == action);
        if described && unknown.iter().all(|(name, _, _)| name.starts_with("Filter.")) {
            // Asked by filter: forwarded, and listed without them (`remember`).
            return None;
        }
        self.note(action, format!("{} {id}", kind.not_found()));
        let fault = Fault { status: 400, code: kind.not_found(), message: "The ID does not exist (not known yet)" };
        Some(fault.response().into_bytes())
    }

    /// Keeps what the model needs of a forwarded call's answer (the answer to a client token, a new id), and
    /// filters a describe's answer of what EC2 would not list yet.
    fn remember(&self, region: &str, action: &str, body: &str, response: &mut Vec<u8>) {
        let text = String::from_utf8_lossy(response).to_string();
        if !text.starts_with("HTTP/1.1 200") && !text.starts_with("HTTP/1.0 200") {
            return;
        }
        if self.model.client_tokens {
            if let Some((_, token)) = parameters(body).into_iter().find(|(name, _)| name == "ClientToken") {
                let mut tokens = self.tokens.lock().unwrap();
                tokens.insert((action.to_string(), token), (body.to_string(), response.clone()));
            }
        }
        if self.model.image_names {
            let parameters = parameters(body);
            let value = |key: &str| parameters.iter().find(|(name, _)| name == key).map(|(_, value)| value.clone());
            let mut names = self.image_names.lock().unwrap();
            match action {
                "CreateImage" | "CopyImage" => {
                    if let (Some(name), Some(id)) = (value("Name"), element(&text, "imageId")) {
                        names.insert((region.to_string(), name), id.to_string());
                    }
                }
                "DeregisterImage" => names.retain(|_, holder| Some(holder.as_str()) != value("ImageId").as_deref()),
                _ => {}
            }
        }
        if self.model.consistency_lag.is_none() {
            return;
        }
        if let Some((_, tag, kind)) = Kind::CREATES.iter().find(|(create, _, _)| *create == action) {
            if let Some(id) = element(&text, tag) {
                self.fresh.lock().unwrap().insert(id.to_string(), (*kind, Instant::now()));
            }
        }
        if let Some((_, set)) = DESCRIBES.iter().find(|(describe, _)| *describe == action) {
            let unknown: Vec<String> = self.unknown_in(body).into_iter().map(|(_, id, _)| id).collect();
            if !unknown.is_empty() {
                for id in &unknown {
                    self.note(action, format!("omitted {id}"));
                }
                *response = rewrite_response(response, Box::new(move |xml: String| omit_items(&xml, set, &unknown)));
            }
        }
    }
}

/// Sends one request (`head` with `body`, its Content-Length set to match) to `upstream` on a connection of
/// its own; the raw response.
fn forward(upstream: &str, head: &str, body: &str) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let mut forwarded = String::new();
    for line in head.split("\r\n").filter(|line| !line.is_empty()) {
        let lower = line.to_ascii_lowercase();
        if !lower.starts_with("connection:") && !lower.starts_with("content-length:") {
            forwarded.push_str(line);
            forwarded.push_str("\r\n");
        }
    }
    forwarded.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()));
    let mut server = TcpStream::connect(upstream)?;
    server.write_all(forwarded.as_bytes())?;
    server.write_all(body.as_bytes())?;
    let mut response = Vec::new();
    server.read_to_end(&mut response)?;
    Ok(response)
}

/// The snapshot tags of a CreateImage or CopyImage request (its `TagSpecification.N` of ResourceType
/// `snapshot`): EC2 tags the new image's snapshots with them at creation; moto answers HTTP 500 to them on
/// CreateImage and ignores them on CopyImage. The proxy takes them out of what moto gets and, once moto has
/// made the image, tags its snapshots with them (DescribeImages, then CreateTags, upstream only: tests see
/// the request as the SDK sent it).
struct SnapshotTags {
    /// The request without them (form-encoded).
    rest: String,
    /// Each tag's key and value, as sent (percent-encoded).
    tags: Vec<(String, String)>,
}

impl SnapshotTags {
    fn taken_from(action: &str, body: &str) -> Option<SnapshotTags> {
        if action != "CreateImage" && action != "CopyImage" {
            return None;
        }
        let pairs: Vec<(&str, &str)> = body.split('&').filter_map(|pair| pair.split_once('=')).collect();
        let prefix = pairs.iter().find_map(|(name, value)| {
            let index = name.strip_prefix("TagSpecification.")?.strip_suffix(".ResourceType")?;
            (*value == "snapshot").then(|| format!("TagSpecification.{index}."))
        })?;
        let value_of = |name: String| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string());
        let tags = (1..)
            .map_while(|n| {
                let key = value_of(format!("{prefix}Tag.{n}.Key"))?;
                Some((key, value_of(format!("{prefix}Tag.{n}.Value")).unwrap_or_default()))
            })
            .collect();
        let rest: Vec<String> = pairs
            .iter()
            .filter(|(name, _)| !name.starts_with(&prefix))
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        Some(SnapshotTags { rest: rest.join("&"), tags })
    }

    /// Tags the snapshots of the image moto's `response` names (nothing if moto refused the call).
    fn apply(&self, upstream: &str, head: &str, response: &[u8]) -> std::io::Result<()> {
        let response = String::from_utf8_lossy(response);
        let Some(image) = element(&response, "imageId") else { return Ok(()) };
        let describe = format!("Action=DescribeImages&Version=2016-11-15&ImageId.1={image}");
        let described = forward(upstream, head, &describe)?;
        let described = String::from_utf8_lossy(&described);
        let snapshots: Vec<&str> =
            described.split("<snapshotId>").skip(1).filter_map(|rest| rest.split('<').next()).collect();
        if snapshots.is_empty() || self.tags.is_empty() {
            return Ok(());
        }
        let mut body = String::from("Action=CreateTags&Version=2016-11-15");
        for (n, snapshot) in snapshots.iter().enumerate() {
            body.push_str(&format!("&ResourceId.{}={snapshot}", n + 1));
        }
        for (n, (key, value)) in self.tags.iter().enumerate() {
            body.push_str(&format!("&Tag.{0}.Key={key}&Tag.{0}.Value={value}", n + 1));
        }
        forward(upstream, head, &body)?;
        Ok(())
    }
}

fn content_length(head: &str) -> Option<usize> {
    head.lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
}

/// Applies `rewrite` to a response's body and sets its Content-Length to match.
fn rewrite_response(response: &[u8], rewrite: Box<dyn FnOnce(String) -> String + Send + '_>) -> Vec<u8> {
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

/// SSM's Session Manager calls, which moto lacks, answered as SSM does: DescribeInstanceInformation lists every
/// instance asked about as `Online`; StartSession answers `TargetNotConnected` the first time for each
/// instance, then a new session (its token a secret the stub plugin checks); TerminateSession answers for any
/// session; DescribeSessions lists the sessions started to the instance filtered on and not ended. Every session
/// started and ended is counted.
#[derive(Default)]
pub struct SessionManagerModel {
    /// Instances that were answered `TargetNotConnected` once.
    refused_once: Mutex<std::collections::HashSet<String>>,
    /// (session id, instance) started, in order.
    pub started: Mutex<Vec<(String, String)>>,
    /// Session ids ended, in order.
    pub ended: Mutex<Vec<String>>,
    next: AtomicUsize,
    /// Every StartSession is answered `TargetNotConnected` (the agent online, yet never reachable).
    pub never_connected: std::sync::atomic::AtomicBool,
}

/// The token every session of [`SessionManagerModel`] carries: the stub plugin checks it came through the
/// environment, and the tests that it is in no argv or file left behind.
pub const SESSION_TOKEN: &str = "fleetbake-test-token-0f1e2d3c4b5a";

impl SessionManagerModel {
    /// Its answer to `request`, if it is one of the Session Manager calls.
    pub fn answer(&self, request: &Request) -> Option<Answer> {
        let json: serde_json::Value = serde_json::from_str(request.body).unwrap_or_default();
        match request.action {
            "DescribeInstanceInformation" => {
                let ids: Vec<String> = json["InstanceInformationFilterList"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|filter| filter["valueSet"].as_array().cloned().unwrap_or_default())
                    .filter_map(|id| id.as_str().map(String::from))
                    .collect();
                let list: Vec<serde_json::Value> = ids
                    .iter()
                    .map(|id| serde_json::json!({ "InstanceId": id, "PingStatus": "Online", "ResourceType": "EC2Instance" }))
                    .collect();
                Some(Answer::Json(200, serde_json::json!({ "InstanceInformationList": list }).to_string()))
            }
            "StartSession" => {
                let target = json["Target"].as_str().unwrap_or_default().to_string();
                let refused = self.refused_once.lock().unwrap().insert(target.clone());
                if refused || self.never_connected.load(Ordering::SeqCst) {
                    let body = serde_json::json!({ "__type": "TargetNotConnected", "message": format!("{target} is not connected.") });
                    return Some(Answer::Json(400, body.to_string()));
                }
                let id = format!("fleetbake-test-{:04}", self.next.fetch_add(1, Ordering::SeqCst));
                self.started.lock().unwrap().push((id.clone(), target));
                let body = serde_json::json!({
                    "SessionId": id,
                    "StreamUrl": format!("wss://ssmmessages.us-west-2.amazonaws.com/v1/data-channel/{id}"),
                    "TokenValue": SESSION_TOKEN,
                });
                Some(Answer::Json(200, body.to_string()))
            }
            "DescribeSessions" => {
                // `State = Active`, filter `Target`: the sessions started to that instance and not ended, one page.
                let target = json["Filters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|filter| filter["key"] == "Target")
                    .and_then(|filter| filter["value"].as_str())
                    .map(String::from);
                let ended = self.ended.lock().unwrap().clone();
                let active: Vec<serde_json::Value> = self
                    .started
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(id, instance)| !ended.contains(id) && target.as_ref().is_none_or(|t| t == instance))
                    .map(|(id, instance)| serde_json::json!({ "SessionId": id, "Target": instance, "Status": "Connected" }))
                    .collect();
                Some(Answer::Json(200, serde_json::json!({ "Sessions": active }).to_string()))
            }
            "TerminateSession" => {
                let id = json["SessionId"].as_str().unwrap_or_default().to_string();
                self.ended.lock().unwrap().push(id.clone());
                Some(Answer::Json(200, serde_json::json!({ "SessionId": id }).to_string()))
            }
            _ => None,
        }
    }
}
