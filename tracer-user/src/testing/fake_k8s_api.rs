//! Test-only loopback Kubernetes API: answers the pod list and watch endpoints (with the field
//! selector, resource versions, 410 expiry) and Job reads as the API server does, and can be
//! stopped and restarted on the same port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::broadcast;
use tokio::task::{JoinHandle, JoinSet};

/// Request heads larger than this are refused.
const MAX_HEAD: usize = 16 * 1024;

#[derive(Clone, Debug)]
struct WatchEvent {
    resource_version: u64,
    kind: &'static str,
    object: Value,
}

#[derive(Debug)]
struct State {
    /// Current pods by UID.
    pods: BTreeMap<String, Value>,
    /// `namespace/name` -> Job object.
    jobs: BTreeMap<String, Value>,
    resource_version: u64,
    history: Vec<WatchEvent>,
    /// Watches from a resource version below this get 410 Gone.
    compacted_below: u64,
    /// Request lines seen.
    requests: Vec<String>,
    live: broadcast::Sender<WatchEvent>,
    /// Tells open watches to end (after sending this many 410 errors: 0 = just close).
    ends: broadcast::Sender<bool>,
}

/// A running fake API server.
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    address: SocketAddr,
    server: Option<JoinHandle<()>>,
}

impl FakeApi {
    pub async fn start() -> FakeApi {
        let state = Arc::new(Mutex::new(State {
            pods: BTreeMap::new(),
            jobs: BTreeMap::new(),
            resource_version: 100,
            history: Vec::new(),
            compacted_below: 0,
            requests: Vec::new(),
            live: broadcast::channel(1024).0,
            ends: broadcast::channel(16).0,
        }));
        let any_port: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        let (address, server) = serve(Arc::clone(&state), any_port);
        FakeApi {
            state,
            address,
            server: Some(server),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds or replaces a pod (by `metadata.uid`), stamping a fresh resource version.
    pub fn apply_pod(&self, mut pod: Value) {
        let mut state = self.lock();
        state.resource_version += 1;
        let version = state.resource_version;
        pod["metadata"]["resourceVersion"] = json!(version.to_string());
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let kind = if state.pods.contains_key(&uid) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        state.pods.insert(uid, pod.clone());
        publish(
            &mut state,
            WatchEvent {
                resource_version: version,
                kind,
                object: pod,
            },
        );
    }

    pub fn delete_pod(&self, uid: &str) {
        let mut state = self.lock();
        let Some(mut pod) = state.pods.remove(uid) else {
            return;
        };
        state.resource_version += 1;
        let version = state.resource_version;
        pod["metadata"]["resourceVersion"] = json!(version.to_string());
        publish(
            &mut state,
            WatchEvent {
                resource_version: version,
                kind: "DELETED",
                object: pod,
            },
        );
    }

    /// Removes a pod without telling watchers (as if the event was lost during an outage).
    pub fn delete_pod_silently(&self, uid: &str) {
        let mut state = self.lock();
        state.pods.remove(uid);
        state.resource_version += 1;
    }

    pub fn put_job(&self, job: Value) {
        let namespace = job["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = job["metadata"]["name"].as_str().unwrap_or_default();
        let key = format!("{namespace}/{name}");
        self.lock().jobs.insert(key, job);
    }

    /// Forgets history so resuming watches get 410 Gone, and ends open watches with a 410 event.
    pub fn expire_watches(&self) {
        let mut state = self.lock();
        state.compacted_below = state.resource_version;
        state.history.clear();
        let _ = state.ends.send(true);
    }

    /// Request lines received so far.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Stops listening and drops every open connection.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }

    /// Listens again on the same port.
    pub fn restart(&mut self) {
        let (_, server) = serve(Arc::clone(&self.state), self.address);
        self.server = Some(server);
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.abort();
        }
    }
}

fn publish(state: &mut State, event: WatchEvent) {
    state.history.push(event.clone());
    let _ = state.live.send(event);
}

fn serve(state: Arc<Mutex<State>>, address: SocketAddr) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpSocket::new_v4()
        .and_then(|socket| {
            socket.set_reuseaddr(true)?;
            socket.bind(address)?;
            socket.listen(64)
        })
        .unwrap_or_else(|e| panic!("fake API cannot listen on {address}: {e}"));
    let bound = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("local_addr: {e}"));
    let server = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            connections.spawn(handle_connection(Arc::clone(&state), stream));
        }
    });
    (bound, server)
}

/// One request per connection (`Connection: close`).
async fn handle_connection(state: Arc<Mutex<State>>, mut stream: TcpStream) {
    let Some(target) = read_request_target(&mut stream).await else {
        return;
    };
    let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
    let params: BTreeMap<String, String> = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect();
    let lock = || {
        state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    lock().requests.push(target.clone());

    if path == "/api/v1/pods" {
        let node = params
            .get("fieldSelector")
            .and_then(|selector| selector.strip_prefix("spec.nodeName="))
            .map(str::to_string);
        let on_node = move |pod: &Value| match &node {
            Some(node) => pod["spec"]["nodeName"].as_str() == Some(node.as_str()),
            None => true,
        };
        if params.get("watch").is_some_and(|w| w == "true" || w == "1") {
            let since: u64 = params
                .get("resourceVersion")
                .and_then(|rv| rv.parse().ok())
                .unwrap_or(0);
            stream_watch(&state, stream, since, on_node).await;
        } else {
            let body = {
                let state = lock();
                let items: Vec<Value> = state
                    .pods
                    .values()
                    .filter(|p| on_node(p))
                    .cloned()
                    .collect();
                json!({"kind": "PodList", "apiVersion": "v1",
                       "metadata": {"resourceVersion": state.resource_version.to_string()},
                       "items": items})
            };
            respond(&mut stream, 200, &body).await;
        }
        return;
    }
    if let Some(rest) = path.strip_prefix("/apis/batch/v1/namespaces/") {
        let job = rest
            .split_once("/jobs/")
            .and_then(|(namespace, name)| lock().jobs.get(&format!("{namespace}/{name}")).cloned());
        match job {
            Some(job) => respond(&mut stream, 200, &job).await,
            None => {
                respond(
                    &mut stream,
                    404,
                    &status_json(404, "NotFound", "job not found"),
                )
                .await
            }
        }
        return;
    }
    respond(
        &mut stream,
        404,
        &status_json(404, "NotFound", "no such path"),
    )
    .await;
}

async fn stream_watch(
    state: &Arc<Mutex<State>>,
    mut stream: TcpStream,
    since: u64,
    on_node: impl Fn(&Value) -> bool,
) {
    let (replay, mut live, mut ends, gone) = {
        let state = state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let replay: Vec<WatchEvent> = state
            .history
            .iter()
            .filter(|e| e.resource_version > since)
            .cloned()
            .collect();
        (
            replay,
            state.live.subscribe(),
            state.ends.subscribe(),
            since < state.compacted_below,
        )
    };
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    if gone {
        let error = json!({"type": "ERROR", "object": status_json(410, "Expired", "too old resource version")});
        let _ = write_chunk(&mut stream, &error).await;
        let _ = stream.write_all(b"0\r\n\r\n").await;
        return;
    }
    let mut last_sent = since;
    for event in replay {
        last_sent = event.resource_version;
        if on_node(&event.object) && write_event(&mut stream, &event).await.is_err() {
            return;
        }
    }
    loop {
        tokio::select! {
            event = live.recv() => {
                let Ok(event) = event else { return };
                if event.resource_version <= last_sent {
                    continue;
                }
                last_sent = event.resource_version;
                if on_node(&event.object) && write_event(&mut stream, &event).await.is_err() {
                    return;
                }
            }
            _ = ends.recv() => {
                let error = json!({"type": "ERROR", "object": status_json(410, "Expired", "too old resource version")});
                let _ = write_chunk(&mut stream, &error).await;
                let _ = stream.write_all(b"0\r\n\r\n").await;
                return;
            }
        }
    }
}

async fn write_event(stream: &mut TcpStream, event: &WatchEvent) -> std::io::Result<()> {
    write_chunk(stream, &json!({"type": event.kind, "object": event.object})).await
}

async fn write_chunk(stream: &mut TcpStream, value: &Value) -> std::io::Result<()> {
    let mut line = value.to_string();
    line.push('\n');
    let chunk = format!("{:x}\r\n{line}\r\n", line.len());
    stream.write_all(chunk.as_bytes()).await?;
    stream.flush().await
}

async fn respond(stream: &mut TcpStream, status: u16, body: &Value) {
    let body = body.to_string();
    let reason = if status == 200 { "OK" } else { "Error" };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// Reads the request head and returns the request target of `GET <target> HTTP/1.1`.
async fn read_request_target(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut buffer).await.ok()?;
        if read == 0 || head.len() > MAX_HEAD {
            return None;
        }
        head.extend_from_slice(buffer.get(..read)?);
    }
    let text = String::from_utf8_lossy(&head);
    let request_line = text.lines().next()?;
    let mut parts = request_line.split(' ');
    let _method = parts.next()?;
    parts.next().map(str::to_string)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (
            bytes.get(i),
            hex.and_then(|h| u8::from_str_radix(h, 16).ok()),
        ) {
            (Some(b'%'), Some(value)) => {
                out.push(value);
                i += 3;
            }
            (Some(b'+'), _) => {
                out.push(b' ');
                i += 1;
            }
            (Some(&b), _) => {
                out.push(b);
                i += 1;
            }
            (None, _) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
