//! Weight exchange over Arrow Flight.
//!
//! The coordinator runs a [`WeightExchange`] Flight service for a training
//! run; every client — in-process ones included, over loopback — fetches
//! the round's global weights with `DoGet` and sends its update back with
//! `DoPut`. Weights travel as record batches of one `Float32` column, cut
//! into chunks so any model size fits under gRPC's message limits; the
//! update's `num_examples` and `loss` ride in the descriptor path. The
//! coordinator merges what arrived over the wire, so the in-process path and
//! remote sites are the same code.
//!
//! - `DoGet(ticket "weights/<round>")` → the global weights of that round;
//! - `DoPut(path ["update", round, client, num_examples, loss], batches)` →
//!   stores the client's update.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::utils::flight_data_to_batches;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use datafusion::arrow::array::{Array, AsArray, Float32Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Float32Type, Schema, SchemaRef};
use futures::{stream, Stream, StreamExt, TryStreamExt};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status, Streaming};

use crate::error::{Result, UdfError};

/// Weights per record batch: 1 MiB of `f32`.
const CHUNK: usize = 256 * 1024;
/// gRPC message limit on both ends; chunks stay far below it.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

fn weights_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("w", DataType::Float32, false)]))
}

fn to_batches(weights: &[f32]) -> Result<Vec<RecordBatch>> {
    weights
        .chunks(CHUNK)
        .map(|c| {
            RecordBatch::try_new(
                weights_schema(),
                vec![Arc::new(Float32Array::from(c.to_vec()))],
            )
            .map_err(|e| UdfError::Training(format!("encoding weights: {e}")))
        })
        .collect()
}

fn from_batches(batches: &[RecordBatch]) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(batches.iter().map(|b| b.num_rows()).sum());
    for b in batches {
        let column = b
            .columns()
            .first()
            .filter(|c| c.data_type() == &DataType::Float32)
            .ok_or_else(|| UdfError::Training("weights must be one Float32 column".into()))?;
        out.extend_from_slice(column.as_primitive::<Float32Type>().values());
    }
    Ok(out)
}

fn wire_size(data: &[FlightData]) -> u64 {
    data.iter().map(|d| (d.encoded_len()) as u64).sum()
}

/// An update as it arrived from a client.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedUpdate {
    pub weights: Vec<f32>,
    pub num_examples: u64,
    pub loss: f64,
    /// Bytes of Flight data received.
    pub bytes: u64,
}

#[derive(Default)]
struct ExchangeState {
    global: Mutex<Option<(u32, Arc<Vec<f32>>)>>,
    updates: Mutex<HashMap<(u32, String), ReceivedUpdate>>,
}

/// The coordinator's Flight service.
struct WeightExchange {
    state: Arc<ExchangeState>,
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
        let ticket = String::from_utf8_lossy(&request.get_ref().ticket).to_string();
        let round: u32 = ticket
            .strip_prefix("weights/")
            .and_then(|r| r.parse().ok())
            .ok_or_else(|| Status::invalid_argument(format!("unknown ticket {ticket}")))?;
        let weights = match &*self.state.global.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((current, w)) if *current == round => Arc::clone(w),
            _ => return Err(Status::not_found(format!("round {round} is not open"))),
        };
        let batches = to_batches(&weights).map_err(|e| Status::internal(e.to_string()))?;
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
        let data: Vec<FlightData> = request.into_inner().try_collect().await?;
        let path = data
            .first()
            .and_then(|d| d.flight_descriptor.as_ref())
            .map(|d| d.path.clone())
            .unwrap_or_default();
        let [kind, round, client, examples, loss] = path.as_slice() else {
            return Err(Status::invalid_argument(
                "an update's descriptor path is [update, round, client, num_examples, loss]",
            ));
        };
        let parse_err = || Status::invalid_argument(format!("bad update descriptor {path:?}"));
        if kind != "update" {
            return Err(parse_err());
        }
        let round: u32 = round.parse().map_err(|_| parse_err())?;
        let batches =
            flight_data_to_batches(&data).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let weights =
            from_batches(&batches).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let update = ReceivedUpdate {
            weights,
            num_examples: examples.parse().map_err(|_| parse_err())?,
            loss: loss.parse().map_err(|_| parse_err())?,
            bytes: wire_size(&data),
        };
        self.state
            .updates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((round, client.clone()), update);
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
        _: Request<Action>,
    ) -> std::result::Result<Response<Self::DoActionStream>, Status> {
        Err(Status::unimplemented("do_action"))
    }
    async fn list_actions(
        &self,
        _: Request<Empty>,
    ) -> std::result::Result<Response<Self::ListActionsStream>, Status> {
        Err(Status::unimplemented("list_actions"))
    }
}

/// A running weight exchange, stopped by [`ExchangeServer::stop`] or when
/// dropped.
pub struct ExchangeServer {
    addr: SocketAddr,
    state: Arc<ExchangeState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ExchangeServer {
    /// Starts the service on a free loopback port.
    pub async fn start() -> Result<ExchangeServer> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| UdfError::Training(format!("weight exchange: cannot listen: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| UdfError::Training(format!("weight exchange: {e}")))?;
        let state = Arc::new(ExchangeState::default());
        let service = FlightServiceServer::new(WeightExchange {
            state: Arc::clone(&state),
        })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
        let (stop, stopped) = oneshot::channel::<()>();
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
            {
                tracing::warn!(error = %e, "weight exchange stopped with an error");
            }
        });
        Ok(ExchangeServer {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Where clients connect.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Opens `round` with these global weights.
    pub fn publish(&self, round: u32, weights: Arc<Vec<f32>>) {
        *self.state.global.lock().unwrap_or_else(|p| p.into_inner()) = Some((round, weights));
    }

    /// The update `client` sent for `round`, if it arrived.
    pub fn take_update(&self, round: u32, client: &str) -> Option<ReceivedUpdate> {
        self.state
            .updates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(round, client.to_string()))
    }

    /// Stops the service and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ExchangeServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A client's connection to the coordinator's exchange.
pub struct ExchangeClient {
    inner: FlightServiceClient<Channel>,
}

impl ExchangeClient {
    /// Connects to `endpoint` (`http://host:port`).
    pub async fn connect(endpoint: &str) -> Result<ExchangeClient> {
        let channel = Channel::from_shared(endpoint.to_string())
            .map_err(|e| UdfError::Training(format!("weight exchange {endpoint}: {e}")))?
            .connect()
            .await
            .map_err(|e| UdfError::Training(format!("weight exchange {endpoint}: {e}")))?;
        Ok(ExchangeClient {
            inner: FlightServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        })
    }

    /// The global weights of `round`, and the bytes that carried them.
    pub async fn fetch(&mut self, round: u32) -> Result<(Vec<f32>, u64)> {
        let ticket = Ticket::new(format!("weights/{round}"));
        let data: Vec<FlightData> = self
            .inner
            .do_get(ticket)
            .await
            .map_err(|e| UdfError::Training(format!("fetching weights: {}", e.message())))?
            .into_inner()
            .try_collect()
            .await
            .map_err(|e| UdfError::Training(format!("fetching weights: {}", e.message())))?;
        let batches = flight_data_to_batches(&data)
            .map_err(|e| UdfError::Training(format!("decoding weights: {e}")))?;
        Ok((from_batches(&batches)?, wire_size(&data)))
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
        let descriptor = FlightDescriptor::new_path(vec![
            "update".into(),
            round.to_string(),
            client.to_string(),
            num_examples.to_string(),
            loss.to_string(),
        ]);
        let data: Vec<FlightData> = FlightDataEncoderBuilder::new()
            .with_schema(weights_schema())
            .with_flight_descriptor(Some(descriptor))
            .build(stream::iter(to_batches(weights)?.into_iter().map(Ok)))
            .try_collect()
            .await
            .map_err(|e| UdfError::Training(format!("encoding update: {e}")))?;
        let bytes = wire_size(&data);
        let mut replies = self
            .inner
            .do_put(stream::iter(data))
            .await
            .map_err(|e| UdfError::Training(format!("sending update: {}", e.message())))?
            .into_inner();
        while let Some(reply) = replies.next().await {
            reply.map_err(|e| UdfError::Training(format!("sending update: {}", e.message())))?;
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn weights_round_trip_over_a_loopback_socket() {
        let server = ExchangeServer::start().await.unwrap();
        // More than one chunk, so batching is exercised.
        let weights: Vec<f32> = (0..(CHUNK * 2 + 17)).map(|i| i as f32 * 0.5).collect();
        server.publish(1, Arc::new(weights.clone()));
        let mut client = ExchangeClient::connect(&server.endpoint()).await.unwrap();
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
        server.stop().await;
    }
}
