//! Weight exchange over Arrow Flight.
//!
//! The coordinator runs one [`WeightExchange`] Flight service
//! ([`ExchangeListener`], on one port for the process's life, so a firewall
//! in front of it needs one rule) and opens a run on it per training run
//! ([`ExchangeListener::open_run`]); every client — in-process ones included, over loopback — fetches
//! the round's global weights with `DoGet` and sends its update back with
//! `DoPut`. Weights travel as record batches of one `Float32` column, cut
//! into chunks so any model size fits under gRPC's message limits; the
//! update's `num_examples` and `loss` ride in the descriptor path. The
//! coordinator merges what arrived over the wire, so the in-process path and
//! remote sites are the same code.
//!
//! - `DoGet(ticket "weights/<round>")` → the global weights of that round;
//! - `DoPut(path ["update", round, client, num_examples, loss], batches)` →
//!   stores the client's update;
//! - `DoPut(path ["masked", …], batches)` → the same for a securely
//!   aggregated round: one `UInt32` column of masked values (see
//!   `secure_aggregation`);
//! - `DoAction("post", {round, stage, client, payload})` and
//!   `DoAction("read", {round, stage})` → a bulletin board for the secure
//!   aggregation stages: clients post, the coordinator closes a stage, and a
//!   read waits until the stage is closed and returns every post.
//!
//! Every call carries the caller's name and its key for this run
//! ([`ExchangeAccess`], headers `x-fedsql-exchange-client` / `-key`): the
//! coordinator admits each client of a run with a fresh random key
//! ([`ExchangeServer::admit`]) and hands it over with the round's task, so
//! someone who reaches the exchange's port can neither read the weights nor
//! send an update, and a client cannot send one under another's name. The
//! key also tells which run a call belongs to. Refused calls are kept for
//! the coordinator ([`ExchangeServer::take_refusals`]).

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use datafusion::arrow::array::{Array, AsArray, Float32Array, PrimitiveArray, RecordBatch};
use datafusion::arrow::buffer::ScalarBuffer;
use datafusion::arrow::datatypes::{
    ArrowPrimitiveType, DataType, Field, Float32Type, Schema, SchemaRef, UInt32Type,
};
use futures::{stream, Stream, StreamExt, TryStreamExt};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use crate::error::{Result, UdfError};
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataValue;

/// What a client needs to take part in a run's exchange: where it is, its
/// name, and the key [`ExchangeServer::admit`] made for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeAccess {
    /// `http://host:port`, or `https://host:port` when the exchange serves
    /// TLS (see [`ExchangeTls`]).
    pub endpoint: String,
    /// The client's name in the run.
    pub client: String,
    /// Hex of 32 random bytes, valid for this run only.
    pub key: String,
    /// A plain loopback endpoint of the same exchange, for clients in the
    /// coordinator's own process (under TLS: their bytes never leave the
    /// machine). Never sent to a site.
    #[serde(skip)]
    pub local_endpoint: Option<String>,
    /// PEM of the CA a remote client verifies an `https://` endpoint with:
    /// the client's own configuration (a site's `coordinator_ca`), never
    /// sent by the coordinator. Without it, the system's roots.
    #[serde(skip)]
    pub trusted_ca: Option<Arc<Vec<u8>>>,
}

/// The certificate chain and private key (PEM) the exchange serves TLS
/// with: the coordinator's Flight SQL ones, so a site that trusts its
/// coordinator trusts its exchange.
#[derive(Clone)]
pub struct ExchangeTls {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

const CLIENT_HEADER: &str = "x-fedsql-exchange-client";
const KEY_HEADER: &str = "x-fedsql-exchange-key";

/// Weights per record batch: 4 MiB of `f32`.
const CHUNK: usize = 1024 * 1024;
/// gRPC message limit on both ends; chunks stay far below it.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// HTTP/2 flow-control windows, per stream and per connection. With h2's
/// default (64 KiB) a sender waits for a window update every 64 KiB — a
/// round trip each. On loopback that costs little (measured: no change on
/// their own), but a remote site's link with a real round trip would be
/// bound by it; a window of a few chunks keeps such a pipe full.
const STREAM_WINDOW: u32 = 16 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;
/// HTTP/2 frame size: one chunk in a handful of frames instead of 64 (the
/// default is 16 KiB).
const FRAME: u32 = 256 * 1024;

fn weights_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("w", DataType::Float32, false)]))
}

fn masked_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("m", DataType::UInt32, false)]))
}

/// `values` as record batches of `schema`'s one column, [`CHUNK`] rows each.
fn to_batches<T: ArrowPrimitiveType>(
    values: &[T::Native],
    schema: SchemaRef,
) -> Result<Vec<RecordBatch>> {
    values
        .chunks(CHUNK)
        .map(|c| {
            let column = PrimitiveArray::<T>::from_iter_values(c.iter().copied());
            RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(column)]).map_err(|e| {
                UdfError::Training(format!("encoding {}: {e}", schema.field(0).name()))
            })
        })
        .collect()
}

/// Decodes a stream of Flight messages carrying one `T` column into its
/// values as the messages arrive (decoding overlaps the transfer), and
/// counts the bytes that carried them.
async fn receive<T: ArrowPrimitiveType>(
    data: impl Stream<Item = std::result::Result<FlightData, FlightError>> + Send + 'static,
) -> std::result::Result<(Vec<T::Native>, u64), FlightError> {
    let bytes = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&bytes);
    let counted = data.inspect_ok(move |d| {
        counter.fetch_add(d.encoded_len() as u64, Ordering::Relaxed);
    });
    let mut batches = FlightRecordBatchStream::new_from_flight_data(counted);
    let mut values = Vec::new();
    while let Some(batch) = batches.try_next().await? {
        let column = batch
            .columns()
            .first()
            .filter(|c| c.data_type() == &T::DATA_TYPE)
            .ok_or_else(|| {
                FlightError::ProtocolError(format!("expected one {} column", T::DATA_TYPE))
            })?;
        values.extend_from_slice(column.as_primitive::<T>().values());
    }
    Ok((values, bytes.load(Ordering::Relaxed)))
}

/// An update as it arrived from a client.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedUpdate {
    /// The weights; empty for a masked update.
    pub weights: Vec<f32>,
    /// A securely aggregated round's masked values.
    pub masked: Option<Vec<u32>>,
    pub num_examples: u64,
    pub loss: f64,
    /// Bytes of Flight data received.
    pub bytes: u64,
}

struct ExchangeState {
    /// The open round and its weights, in an Arrow buffer every `DoGet`
    /// slices without copying.
    global: Mutex<Option<(u32, ScalarBuffer<f32>)>>,
    updates: Mutex<HashMap<(u32, String), ReceivedUpdate>>,
    /// Bulletin-board stages by (round, stage name).
    board: Mutex<HashMap<(u32, String), Stage>>,
    /// Clients known to have failed in a round: no stage waits for them.
    gone: Mutex<std::collections::HashSet<(u32, String)>>,
    /// Bumped on every post and close, so waiters look again.
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for ExchangeState {
    fn default() -> Self {
        ExchangeState {
            global: Mutex::default(),
            updates: Mutex::default(),
            board: Mutex::default(),
            gone: Mutex::default(),
            changed: tokio::sync::watch::channel(0).0,
        }
    }
}

/// One stage of the bulletin board: who posted what, and whether the
/// coordinator has closed it (no more posts; reads answer).
#[derive(Default)]
struct Stage {
    posts: BTreeMap<String, Vec<u8>>,
    closed: bool,
}

/// A `post` action's body.
#[derive(serde::Serialize, serde::Deserialize)]
struct Post {
    round: u32,
    stage: String,
    client: String,
    payload: Vec<u8>,
}

/// A `read` action's body.
#[derive(serde::Serialize, serde::Deserialize)]
struct Read {
    round: u32,
    stage: String,
}

/// A client admitted to a run: its name, and the run.
struct Admission {
    client: String,
    run: Arc<ExchangeState>,
}

/// Every open run of a listener, by the BLAKE3 hashes of its clients'
/// keys (the keys themselves are never kept).
#[derive(Default)]
struct Runs {
    keys: Mutex<HashMap<[u8; 32], Admission>>,
    /// Why calls were refused, oldest first, until a run reads them (a
    /// refused call names no run it could be told apart by).
    refusals: Mutex<Vec<String>>,
}

impl Runs {
    fn lock_keys(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Admission>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a refused call and answers it `unauthenticated`.
    fn refuse(&self, why: String) -> Status {
        tracing::warn!(refusal = %why, "weight exchange refused a call");
        self.refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(why.clone());
        Status::unauthenticated(why)
    }

    /// Records a refused update (a well-authenticated call with values that
    /// cannot be merged) and answers it `invalid_argument`.
    fn reject(&self, why: String) -> Status {
        tracing::warn!(refusal = %why, "weight exchange refused an update");
        self.refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(why.clone());
        Status::invalid_argument(why)
    }

    /// The admitted client a call comes from, by its name and key headers,
    /// and the run the key admits it to.
    fn authenticate<T>(
        &self,
        request: &Request<T>,
    ) -> std::result::Result<(String, Arc<ExchangeState>), Status> {
        let header = |name| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (Some(client), Some(key)) = (header(CLIENT_HEADER), header(KEY_HEADER)) else {
            return Err(self.refuse("a call without an exchange key".into()));
        };
        let hash = *blake3::hash(key.as_bytes()).as_bytes();
        let keys = self.lock_keys();
        match keys.get(&hash) {
            Some(a) if a.client == client => Ok((client, Arc::clone(&a.run))),
            _ => {
                let known = keys.values().any(|a| a.client == client);
                drop(keys);
                Err(self.refuse(if known {
                    format!("a wrong exchange key for {client}")
                } else {
                    format!("{client} is not a client of this run")
                }))
            }
        }
    }

    /// Refuses a call of `caller` that acts as `client`.
    fn same_client(&self, caller: &str, client: &str) -> std::result::Result<(), Status> {
        if caller == client {
            Ok(())
        } else {
            Err(self.refuse(format!("{caller} sent as {client}")))
        }
    }
}

impl ExchangeState {
    fn lock_board(&self) -> std::sync::MutexGuard<'_, HashMap<(u32, String), Stage>> {
        self.board.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn post(&self, post: Post) -> std::result::Result<(), Status> {
        let mut board = self.lock_board();
        let stage = board.entry((post.round, post.stage.clone())).or_default();
        if stage.closed {
            return Err(Status::failed_precondition(format!(
                "stage {} of round {} is closed",
                post.stage, post.round
            )));
        }
        stage.posts.insert(post.client, post.payload);
        drop(board);
        self.changed.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Every post of a stage once it is closed.
    async fn read(&self, round: u32, stage: &str) -> BTreeMap<String, Vec<u8>> {
        let mut changed = self.changed.subscribe();
        loop {
            if let Some(s) = self.lock_board().get(&(round, stage.to_string())) {
                if s.closed {
                    return s.posts.clone();
                }
            }
            if changed.changed().await.is_err() {
                return BTreeMap::new();
            }
        }
    }

    /// Waits until every one of `expected` posted in the stage, or
    /// `timeout`, then closes it and returns its posts.
    async fn close(
        &self,
        round: u32,
        stage: &str,
        expected: &[String],
        timeout: std::time::Duration,
    ) -> BTreeMap<String, Vec<u8>> {
        let key = (round, stage.to_string());
        let mut changed = self.changed.subscribe();
        let all_posted = async {
            loop {
                let done = {
                    let gone = self.gone.lock().unwrap_or_else(|p| p.into_inner());
                    let board = self.lock_board();
                    let posted =
                        |e: &String| board.get(&key).is_some_and(|s| s.posts.contains_key(e));
                    expected
                        .iter()
                        .all(|e| posted(e) || gone.contains(&(round, e.clone())))
                };
                if done || changed.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(timeout, all_posted).await;
        let mut board = self.lock_board();
        let s = board.entry(key).or_default();
        s.closed = true;
        let posts = s.posts.clone();
        drop(board);
        self.changed.send_modify(|v| *v += 1);
        posts
    }
}

/// The coordinator's Flight service.
struct WeightExchange {
    runs: Arc<Runs>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl FlightService for WeightExchange {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoExchangeStream = BoxStream<FlightData>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<Self::DoGetStream>, Status> {
        let (_, state) = self.runs.authenticate(&request)?;
        let ticket = String::from_utf8_lossy(&request.get_ref().ticket).to_string();
        let round: u32 = ticket
            .strip_prefix("weights/")
            .and_then(|r| r.parse().ok())
            .ok_or_else(|| Status::invalid_argument(format!("unknown ticket {ticket}")))?;
        let weights = match &*state.global.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((current, w)) if *current == round => w.clone(),
            _ => return Err(Status::not_found(format!("round {round} is not open"))),
        };
        let batches = (0..weights.len())
            .step_by(CHUNK)
            .map(|start| {
                let len = CHUNK.min(weights.len() - start);
                let chunk = Float32Array::new(weights.slice(start, len), None);
                RecordBatch::try_new(weights_schema(), vec![Arc::new(chunk)])
                    .map_err(|e| Status::internal(e.to_string()))
            })
            .collect::<std::result::Result<Vec<_>, Status>>()?;
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(weights_schema())
            .build(stream::iter(batches.into_iter().map(Ok)))
            .map_err(Status::from);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoPutStream>, Status> {
        let (caller, state) = self.runs.authenticate(&request)?;
        let mut data = request.into_inner();
        let first = data
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("an update without messages"))?;
        let path = first
            .flight_descriptor
            .as_ref()
            .map(|d| d.path.clone())
            .unwrap_or_default();
        let [kind, round, client, examples, loss] = path.as_slice() else {
            return Err(Status::invalid_argument(
                "an update's descriptor path is [update, round, client, num_examples, loss]",
            ));
        };
        self.runs.same_client(&caller, client)?;
        let parse_err = || Status::invalid_argument(format!("bad update descriptor {path:?}"));
        let round: u32 = round.parse().map_err(|_| parse_err())?;
        let messages = stream::once(async { Ok(first) })
            .chain(data)
            .map_err(FlightError::from);
        let invalid = |e: FlightError| Status::invalid_argument(e.to_string());
        let (weights, masked, bytes) = match kind.as_str() {
            "update" => {
                let (w, bytes) = receive::<Float32Type>(messages).await.map_err(invalid)?;
                (w, None, bytes)
            }
            "masked" => {
                let (m, bytes) = receive::<UInt32Type>(messages).await.map_err(invalid)?;
                (Vec::new(), Some(m), bytes)
            }
            _ => return Err(parse_err()),
        };
        // A short or long update (a client cut off mid-stream, or another
        // model's) is refused here rather than failing the merge.
        let expected = match &*state.global.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((current, w)) if *current == round => w.len(),
            _ => return Err(Status::not_found(format!("round {round} is not open"))),
        };
        let got = masked.as_ref().map_or(weights.len(), Vec::len);
        if got != expected {
            return Err(self.runs.reject(format!(
                "an update of {caller} for round {round} with {got} weights (the model has {expected})"
            )));
        }
        // One NaN or infinity would poison every coordinate of a mean.
        if let Some(at) = weights.iter().position(|w| !w.is_finite()) {
            return Err(self.runs.reject(format!(
                "an update of {caller} for round {round} with a non-finite weight ({} at {at})",
                weights[at]
            )));
        }
        let update = ReceivedUpdate {
            weights,
            masked,
            num_examples: examples.parse().map_err(|_| parse_err())?,
            loss: loss.parse().map_err(|_| parse_err())?,
            bytes,
        };
        state
            .updates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((round, client.clone()), update);
        state.changed.send_modify(|v| *v += 1);
        Ok(Response::new(Box::pin(stream::iter([Ok(
            PutResult::default(),
        )]))))
    }

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> std::result::Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented(
            "the weight exchange needs no handshake",
        ))
    }
    async fn list_flights(
        &self,
        _: Request<Criteria>,
    ) -> std::result::Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented("list_flights"))
    }
    async fn get_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented("get_flight_info"))
    }
    async fn poll_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("poll_flight_info"))
    }
    async fn get_schema(
        &self,
        _: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented("get_schema"))
    }
    async fn do_exchange(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("do_exchange"))
    }
    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> std::result::Result<Response<Self::DoActionStream>, Status> {
        let (caller, state) = self.runs.authenticate(&request)?;
        let action = request.into_inner();
        let bad =
            |e: serde_json::Error| Status::invalid_argument(format!("{}: {e}", action.r#type));
        let body = match action.r#type.as_str() {
            "post" => {
                let post: Post = serde_json::from_slice(&action.body).map_err(bad)?;
                self.runs.same_client(&caller, &post.client)?;
                state.post(post)?;
                Vec::new()
            }
            "read" => {
                let read: Read = serde_json::from_slice(&action.body).map_err(bad)?;
                let posts = state.read(read.round, &read.stage).await;
                serde_json::to_vec(&posts).map_err(|e| Status::internal(e.to_string()))?
            }
            other => return Err(Status::unimplemented(format!("action {other}"))),
        };
        Ok(Response::new(Box::pin(stream::iter([Ok(
            arrow_flight::Result { body: body.into() },
        )]))))
    }
    async fn list_actions(
        &self,
        _: Request<Empty>,
    ) -> std::result::Result<Response<Self::ListActionsStream>, Status> {
        Err(Status::unimplemented("list_actions"))
    }
}

/// The weight exchange's Flight service on its port(s), serving every run
/// opened on it; stopped by [`ExchangeListener::stop`] or when dropped.
pub struct ExchangeListener {
    /// The URL clients connect to.
    endpoint: String,
    /// Under TLS, the plain loopback URL for in-process clients.
    local_endpoint: Option<String>,
    runs: Arc<Runs>,
    /// One per listening socket.
    stop: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

/// The URL clients reach a listener bound to `bound` by: `advertise` when
/// given (`name`, or `name:port` when a proxy or NAT forwards another port
/// to this one), else the bound address — `localhost` under TLS on
/// loopback, the name certificates are issued for.
fn advertised(advertise: Option<&str>, bound: std::net::SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let port = bound.port();
    match advertise {
        Some(a) if a.parse::<std::net::SocketAddr>().is_ok() => format!("{scheme}://{a}"),
        Some(a) if a.parse::<std::net::Ipv6Addr>().is_ok() => format!("{scheme}://[{a}]:{port}"),
        Some(a) => match a.rsplit_once(':') {
            Some((name, p)) if p.parse::<u16>().is_ok() => format!("{scheme}://{name}:{p}"),
            _ => format!("{scheme}://{a}:{port}"),
        },
        None if tls && bound.ip().is_loopback() => format!("{scheme}://localhost:{port}"),
        None => format!("{scheme}://{bound}"),
    }
}

impl ExchangeListener {
    /// Starts the service on `port` of `host` (`0`: a free one); clients
    /// are told to connect to `advertise` (see [`advertised`]) instead of
    /// `host` when given. With `tls`, that port serves TLS (its URL
    /// `https://`), and a second, plain listener on loopback serves
    /// clients in this process.
    pub async fn start_on(
        host: std::net::IpAddr,
        port: u16,
        advertise: Option<String>,
        tls: Option<ExchangeTls>,
    ) -> Result<ExchangeListener> {
        let bind = |host: std::net::IpAddr, port: u16| async move {
            let listener = TcpListener::bind((host, port)).await.map_err(|e| {
                UdfError::Training(format!(
                    "weight exchange: cannot listen on {host} port {port}: {e}"
                ))
            })?;
            let addr = listener
                .local_addr()
                .map_err(|e| UdfError::Training(format!("weight exchange: {e}")))?;
            Ok::<_, UdfError>((listener, addr))
        };
        let (listener, addr) = bind(host, port).await?;
        let mut server = ExchangeListener {
            endpoint: advertised(advertise.as_deref(), addr, tls.is_some()),
            local_endpoint: None,
            runs: Arc::default(),
            stop: Vec::new(),
            tasks: Vec::new(),
        };
        if let Some(tls) = tls {
            let (local, local_addr) = bind(std::net::Ipv4Addr::LOCALHOST.into(), 0).await?;
            server.local_endpoint = Some(format!("http://{local_addr}"));
            server.serve(local, None)?;
            server.serve(listener, Some(tls))?;
        } else {
            server.serve(listener, None)?;
        }
        tracing::info!(endpoint = %server.endpoint, "weight exchange listening");
        Ok(server)
    }

    /// Serves every run on `listener` until stopped.
    fn serve(&mut self, listener: TcpListener, tls: Option<ExchangeTls>) -> Result<()> {
        let service = FlightServiceServer::new(WeightExchange {
            runs: Arc::clone(&self.runs),
        })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
        let mut builder = Server::builder()
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(FRAME);
        if let Some(tls) = tls {
            builder = builder
                .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(tls.cert, tls.key)))
                .map_err(|e| UdfError::Training(format!("weight exchange TLS: {e}")))?;
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        self.tasks.push(tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = builder
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
            {
                tracing::warn!(error = %e, "weight exchange stopped with an error");
            }
        }));
        self.stop.push(stop);
        Ok(())
    }

    /// Where clients connect.
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// A new run on this listener: its own weights, updates and board,
    /// reachable only with the keys it admits.
    pub fn open_run(&self) -> ExchangeServer {
        ExchangeServer {
            endpoint: self.endpoint.clone(),
            local_endpoint: self.local_endpoint.clone(),
            runs: Arc::clone(&self.runs),
            state: Arc::default(),
            listener: None,
        }
    }

    /// Stops the service and waits for it.
    pub async fn stop(mut self) {
        for stop in self.stop.drain(..) {
            let _ = stop.send(());
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for ExchangeListener {
    fn drop(&mut self) {
        for stop in self.stop.drain(..) {
            let _ = stop.send(());
        }
    }
}

/// One training run on a weight exchange: it publishes the rounds' weights,
/// admits the run's clients and collects their updates. Its keys stop
/// working when it is stopped or dropped.
pub struct ExchangeServer {
    endpoint: String,
    local_endpoint: Option<String>,
    runs: Arc<Runs>,
    state: Arc<ExchangeState>,
    /// The listener, when this run has one of its own
    /// ([`ExchangeServer::start`]).
    listener: Option<ExchangeListener>,
}

impl ExchangeServer {
    /// A run on a listener of its own, on a free loopback port (tests,
    /// benchmarks, in-process use).
    pub async fn start() -> Result<ExchangeServer> {
        let listener =
            ExchangeListener::start_on(std::net::Ipv4Addr::LOCALHOST.into(), 0, None, None).await?;
        let mut run = listener.open_run();
        run.listener = Some(listener);
        Ok(run)
    }

    /// Where clients connect.
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// Admits `client` to this run with a fresh key (replacing an earlier
    /// one) and returns what it needs to connect.
    pub fn admit(&self, client: &str) -> ExchangeAccess {
        let key: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let mut keys = self.runs.lock_keys();
        keys.retain(|_, a| !(Arc::ptr_eq(&a.run, &self.state) && a.client == client));
        keys.insert(
            *blake3::hash(key.as_bytes()).as_bytes(),
            Admission {
                client: client.to_string(),
                run: Arc::clone(&self.state),
            },
        );
        ExchangeAccess {
            endpoint: self.endpoint.clone(),
            client: client.to_string(),
            key,
            local_endpoint: self.local_endpoint.clone(),
            trusted_ca: None,
        }
    }

    /// The calls refused since the last look, and why.
    pub fn take_refusals(&self) -> Vec<String> {
        std::mem::take(&mut *self.runs.refusals.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Opens `round` with these global weights.
    pub fn publish(&self, round: u32, weights: Vec<f32>) {
        *self.state.global.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((round, ScalarBuffer::from(weights)));
    }

    /// The update `client` sent for `round`, if it arrived.
    pub fn take_update(&self, round: u32, client: &str) -> Option<ReceivedUpdate> {
        self.state
            .updates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(round, client.to_string()))
    }

    /// Posts the coordinator's own message to a stage and closes it.
    pub async fn announce(&self, round: u32, stage: &str, payload: Vec<u8>) {
        let _ = self.state.post(Post {
            round,
            stage: stage.to_string(),
            client: "coordinator".into(),
            payload,
        });
        // Waiting for nobody, the close is immediate.
        self.state
            .close(round, stage, &[], std::time::Duration::ZERO)
            .await;
    }

    /// A handle the coordinator closes bulletin-board stages through (from
    /// any task).
    pub fn board(&self) -> ExchangeBoard {
        ExchangeBoard(Arc::clone(&self.state))
    }

    /// Ends the run (its keys stop working) and stops its own listener, if
    /// it has one.
    pub async fn stop(mut self) {
        self.forget_keys();
        if let Some(listener) = self.listener.take() {
            listener.stop().await;
        }
    }

    fn forget_keys(&self) {
        self.runs
            .lock_keys()
            .retain(|_, a| !Arc::ptr_eq(&a.run, &self.state));
    }
}

impl Drop for ExchangeServer {
    fn drop(&mut self) {
        self.forget_keys();
    }
}

/// The coordinator's handle on the bulletin board (see
/// [`ExchangeServer::board`]).
#[derive(Clone)]
pub struct ExchangeBoard(Arc<ExchangeState>);

impl ExchangeBoard {
    /// Closes a stage once each of `expected` posted (or after `timeout`)
    /// and returns its posts by client.
    pub async fn close_stage(
        &self,
        round: u32,
        stage: &str,
        expected: &[String],
        timeout: std::time::Duration,
    ) -> BTreeMap<String, Vec<u8>> {
        self.0.close(round, stage, expected, timeout).await
    }

    /// Waits until each of `expected` sent its update for `round` (or
    /// withdrew), or `timeout`.
    pub async fn wait_for_updates(
        &self,
        round: u32,
        expected: &[String],
        timeout: std::time::Duration,
    ) {
        let state = &self.0;
        let mut changed = state.changed.subscribe();
        let all_sent = async {
            loop {
                let done = {
                    let gone = state.gone.lock().unwrap_or_else(|p| p.into_inner());
                    let updates = state.updates.lock().unwrap_or_else(|p| p.into_inner());
                    expected.iter().all(|e| {
                        let key = (round, e.clone());
                        updates.contains_key(&key) || gone.contains(&key)
                    })
                };
                if done || changed.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(timeout, all_sent).await;
    }

    /// Records that `client` failed in `round`, so no stage waits for it
    /// until its timeout (in-process clients report their own failure; a
    /// remote one that vanishes is waited for).
    pub fn withdraw(&self, round: u32, client: &str) {
        self.0
            .gone
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((round, client.to_string()));
        self.0.changed.send_modify(|v| *v += 1);
    }
}

/// A client's connection to the coordinator's exchange.
pub struct ExchangeClient {
    inner: FlightServiceClient<Channel>,
    /// The name and key headers every call carries.
    client: MetadataValue<tonic::metadata::Ascii>,
    key: MetadataValue<tonic::metadata::Ascii>,
}

impl ExchangeClient {
    /// Connects to a run's exchange as the client `access` admits.
    pub async fn connect(access: &ExchangeAccess) -> Result<ExchangeClient> {
        // In the coordinator's process, the plain loopback listener.
        let endpoint = access
            .local_endpoint
            .as_deref()
            .unwrap_or(access.endpoint.as_str());
        let header = |value: &str| {
            MetadataValue::try_from(value).map_err(|_| {
                UdfError::Training(format!("weight exchange: {value:?} is not a header value"))
            })
        };
        let (client, key) = (header(&access.client)?, header(&access.key)?);
        let mut channel = Channel::from_shared(endpoint.to_string())
            .map_err(|e| UdfError::Training(format!("weight exchange {endpoint}: {e}")))?;
        if endpoint.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_enabled_roots();
            if let Some(ca) = &access.trusted_ca {
                tls = tls.ca_certificate(Certificate::from_pem(ca.as_slice()));
            }
            channel = channel
                .tls_config(tls)
                .map_err(|e| UdfError::Training(format!("weight exchange TLS: {e}")))?;
        }
        let channel = channel
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(FRAME)
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| UdfError::Training(format!("weight exchange {endpoint}: {e}")))?;
        Ok(ExchangeClient {
            inner: FlightServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            client,
            key,
        })
    }

    /// `message` as a request carrying this client's name and key.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        metadata.insert(CLIENT_HEADER, self.client.clone());
        metadata.insert(KEY_HEADER, self.key.clone());
        request
    }

    /// The global weights of `round`, and the bytes that carried them.
    pub async fn fetch(&mut self, round: u32) -> Result<(Vec<f32>, u64)> {
        let ticket = Ticket::new(format!("weights/{round}"));
        let failed = |e: FlightError| UdfError::Training(format!("fetching weights: {e}"));
        let data = self
            .inner
            .do_get(self.request(ticket))
            .await
            .map_err(|e| UdfError::Training(format!("fetching weights: {}", e.message())))?
            .into_inner()
            .map_err(FlightError::from);
        receive::<Float32Type>(data).await.map_err(failed)
    }

    /// Posts `payload` as `client` to a bulletin-board stage.
    pub async fn post(
        &mut self,
        round: u32,
        stage: &str,
        client: &str,
        payload: Vec<u8>,
    ) -> Result<()> {
        let body = serde_json::to_vec(&Post {
            round,
            stage: stage.to_string(),
            client: client.to_string(),
            payload,
        })
        .map_err(|e| UdfError::Training(format!("posting to {stage}: {e}")))?;
        self.action("post", body).await.map(|_| ())
    }

    /// Every post of a stage, once the coordinator has closed it.
    pub async fn read(&mut self, round: u32, stage: &str) -> Result<BTreeMap<String, Vec<u8>>> {
        let body = serde_json::to_vec(&Read {
            round,
            stage: stage.to_string(),
        })
        .map_err(|e| UdfError::Training(format!("reading {stage}: {e}")))?;
        let reply = self.action("read", body).await?;
        serde_json::from_slice(&reply)
            .map_err(|e| UdfError::Training(format!("reading {stage}: {e}")))
    }

    async fn action(&mut self, kind: &str, body: Vec<u8>) -> Result<Vec<u8>> {
        let action = Action {
            r#type: kind.to_string(),
            body: body.into(),
        };
        let failed =
            |e: Status| UdfError::Training(format!("weight exchange {kind}: {}", e.message()));
        let mut replies = self
            .inner
            .do_action(self.request(action))
            .await
            .map_err(failed)?
            .into_inner();
        let mut out = Vec::new();
        while let Some(reply) = replies.next().await {
            out.extend_from_slice(&reply.map_err(failed)?.body);
        }
        Ok(out)
    }

    /// Sends a securely aggregated round's masked update; returns the bytes
    /// sent.
    pub async fn send_masked(
        &mut self,
        round: u32,
        client: &str,
        masked: &[u32],
        num_examples: u64,
        loss: f64,
    ) -> Result<u64> {
        let schema = masked_schema();
        self.put::<UInt32Type>("masked", round, client, masked, schema, num_examples, loss)
            .await
    }

    /// Sends an update; returns the bytes sent.
    pub async fn send(
        &mut self,
        round: u32,
        client: &str,
        weights: &[f32],
        num_examples: u64,
        loss: f64,
    ) -> Result<u64> {
        let schema = weights_schema();
        self.put::<Float32Type>("update", round, client, weights, schema, num_examples, loss)
            .await
    }

    /// `DoPut` of `values` as one-column batches of `schema`, described by
    /// `[kind, round, client, num_examples, loss]`.
    #[allow(clippy::too_many_arguments)]
    async fn put<T: ArrowPrimitiveType>(
        &mut self,
        kind: &str,
        round: u32,
        client: &str,
        values: &[T::Native],
        schema: SchemaRef,
        num_examples: u64,
        loss: f64,
    ) -> Result<u64> {
        let batches = to_batches::<T>(values, Arc::clone(&schema))?;
        let descriptor = FlightDescriptor::new_path(vec![
            kind.into(),
            round.to_string(),
            client.to_string(),
            num_examples.to_string(),
            loss.to_string(),
        ]);
        // Encoded while it is sent, so encoding and the socket overlap; an
        // encoding error ends the stream and is reported after the call.
        let sent = Arc::new(AtomicU64::new(0));
        let failure: Arc<Mutex<Option<String>>> = Arc::default();
        let (counter, failed) = (Arc::clone(&sent), Arc::clone(&failure));
        let data = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .with_flight_descriptor(Some(descriptor))
            .build(stream::iter(batches.into_iter().map(Ok)))
            .scan((), move |_, d| {
                futures::future::ready(match d {
                    Ok(d) => {
                        counter.fetch_add(d.encoded_len() as u64, Ordering::Relaxed);
                        Some(d)
                    }
                    Err(e) => {
                        *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                        None
                    }
                })
            });
        let outcome = async {
            let request = self.request(data);
            let mut replies = self.inner.do_put(request).await?.into_inner();
            while let Some(reply) = replies.next().await {
                reply?;
            }
            Ok::<(), Status>(())
        }
        .await;
        if let Some(e) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(UdfError::Training(format!("encoding update: {e}")));
        }
        outcome.map_err(|e| UdfError::Training(format!("sending update: {}", e.message())))?;
        let bytes = sent.load(Ordering::Relaxed);
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stage_closes_when_everyone_posted_or_withdrew() {
        let server = ExchangeServer::start().await.unwrap();
        let board = server.board();
        let mut a = ExchangeClient::connect(&server.admit("a")).await.unwrap();
        a.post(1, "keys", "a", vec![1, 2]).await.unwrap();
        let expected = ["a".to_string(), "b".to_string()];
        let withdraw = board.clone();
        tokio::spawn(async move { withdraw.withdraw(1, "b") });
        let started = std::time::Instant::now();
        let long = std::time::Duration::from_secs(60);
        let posts = board.close_stage(1, "keys", &expected, long).await;
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        assert_eq!(posts.keys().collect::<Vec<_>>(), ["a"]);
        // Readers get the closed stage; late posts are refused.
        assert_eq!(a.read(1, "keys").await.unwrap(), posts);
        assert!(a.post(1, "keys", "a", vec![]).await.is_err());
    }

    #[tokio::test]
    async fn only_admitted_clients_reach_the_exchange_and_only_as_themselves() {
        let server = ExchangeServer::start().await.unwrap();
        server.publish(1, vec![0.5; 10]);
        let eu = server.admit("eu");
        let us = server.admit("us");
        // No key, a made-up key, a client the run does not have.
        let forged = |client: &str, key: &str| ExchangeAccess {
            endpoint: server.endpoint(),
            client: client.into(),
            key: key.into(),
            local_endpoint: None,
            trusted_ca: None,
        };
        for (access, why) in [
            (forged("eu", &us.key), "a wrong exchange key for eu"),
            (
                forged("mallory", &eu.key),
                "mallory is not a client of this run",
            ),
        ] {
            let mut c = ExchangeClient::connect(&access).await.unwrap();
            let e = c.fetch(1).await.unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
            let e = c.send(1, &access.client, &[1.0; 10], 1, 0.0).await;
            assert!(e.unwrap_err().to_string().contains(why));
        }
        let channel = Channel::from_shared(server.endpoint())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut raw = FlightServiceClient::new(channel);
        let e = raw
            .do_get(Ticket::new("weights/1".to_string()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        // us cannot send eu's update or post as eu.
        let mut as_us = ExchangeClient::connect(&us).await.unwrap();
        let e = as_us.send(1, "eu", &[9.0; 10], 1, 0.0).await.unwrap_err();
        assert!(e.to_string().contains("us sent as eu"), "{e}");
        assert!(as_us.post(1, "keys", "eu", vec![1]).await.is_err());
        assert!(server.take_update(1, "eu").is_none());
        // Every refusal is kept for the coordinator.
        let refusals = server.take_refusals();
        assert_eq!(refusals.len(), 7, "{refusals:?}");
        assert!(refusals.contains(&"us sent as eu".to_string()));
        // The admitted client itself works.
        let mut as_eu = ExchangeClient::connect(&eu).await.unwrap();
        assert_eq!(as_eu.fetch(1).await.unwrap().0, vec![0.5; 10]);
        as_eu.send(1, "eu", &[2.0; 10], 3, 0.0).await.unwrap();
        assert_eq!(server.take_update(1, "eu").unwrap().weights, vec![2.0; 10]);
        server.stop().await;
    }

    #[tokio::test]
    async fn weights_round_trip_over_a_loopback_socket() {
        let server = ExchangeServer::start().await.unwrap();
        // More than one chunk, so batching is exercised.
        let weights: Vec<f32> = (0..(CHUNK * 2 + 17)).map(|i| i as f32 * 0.5).collect();
        server.publish(1, weights.clone());
        let mut client = ExchangeClient::connect(&server.admit("eu")).await.unwrap();
        let (fetched, bytes) = client.fetch(1).await.unwrap();
        assert_eq!(fetched, weights);
        assert!(bytes >= 4 * weights.len() as u64);
        assert!(client.fetch(2).await.is_err(), "round 2 is not open");

        let update: Vec<f32> = weights.iter().map(|w| w + 1.0).collect();
        let sent = client.send(1, "eu", &update, 42, 0.25).await.unwrap();
        let got = server.take_update(1, "eu").unwrap();
        assert_eq!(got.weights, update);
        assert_eq!((got.num_examples, got.loss, got.bytes), (42, 0.25, sent));
        assert!(server.take_update(1, "eu").is_none(), "taken once");
        let short = client.send(1, "eu", &update[1..], 42, 0.25).await;
        let message = short.unwrap_err().to_string();
        assert!(
            message.contains(&format!(
                "with {} weights (the model has {})",
                update.len() - 1,
                update.len()
            )),
            "{message}"
        );
        // A NaN or an infinity anywhere is refused: it would poison a mean.
        for bad in [f32::NAN, f32::INFINITY] {
            let mut poisoned = update.clone();
            poisoned[CHUNK + 3] = bad;
            let e = client.send(1, "eu", &poisoned, 42, 0.25).await.unwrap_err();
            assert!(e.to_string().contains("non-finite weight"), "{e}");
        }
        assert!(client.send(2, "eu", &update, 42, 0.25).await.is_err());
        assert!(server.take_update(1, "eu").is_none());
        // The refused updates are reported to the coordinator.
        assert_eq!(server.take_refusals().len(), 3);
        server.stop().await;
    }
}
