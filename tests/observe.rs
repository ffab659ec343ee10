//! Observe (RFC 7641) over a real UDP socket pair, both roles through the serve loop: a
//! client session observes a listener's resource with [`PeerLink::observe`]; the listener's
//! handler takes an [`ObserverHandle`] from its link and notifies (NON and CON) from a task
//! of its own; cancelling the observation removes the observer on the listener's side.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use privgw::coap::{
    self, CoapOption, MessageClass, Packet, RequestType, ResponseType, TransportTuning,
};
use privgw::config::{EndpointUri, Scheme};
use privgw::runtime::{
    Handler, Listener, ObserverError, ObserverHandle, PeerLink, Security, spawn_session,
};
use privgw::transport::PeerInfo;
use privgw::transport::mux::DatagramMux;
use tokio::sync::watch;

/// Every wait in this file is bounded by this (the machine is loaded).
const WAIT: Duration = Duration::from_secs(20);

fn get(path: &str) -> Packet {
    let mut p = Packet::new();
    p.header.code = MessageClass::Request(RequestType::Get);
    coap::set_uri(&mut p, path);
    p
}

fn content(body: &str) -> Packet {
    let mut p = Packet::new();
    p.header.code = MessageClass::Response(ResponseType::Content);
    p.payload = body.as_bytes().to_vec();
    p
}

/// The listener's handler: `/temp` is observable — a registration starts a task that
/// notifies `"1"`, `"2"` (CON), `"3"`, then keeps notifying until the observer is gone and
/// records how that ended; `/plain` is not observable.
#[derive(Default)]
struct Sensor {
    outcome: Mutex<Option<Result<(), ObserverError>>>,
    done: tokio::sync::Notify,
}

impl Sensor {
    async fn notify_until_gone(self: Arc<Self>, observer: ObserverHandle) {
        let mut result = Ok(());
        for i in 1..=200u32 {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let body = i.to_string();
            result = if i == 2 {
                observer.notify_confirmable(content(&body)).await
            } else {
                observer.notify(content(&body)).await
            };
            if result.is_err() {
                break;
            }
        }
        *self.outcome.lock().unwrap() = Some(result);
        self.done.notify_one();
    }
}

struct Shared(Arc<Sensor>);

impl Handler for Shared {
    async fn handle(&self, _peer: &PeerInfo, request: Packet) -> Packet {
        coap::response_to(&request, ResponseType::NotFound)
    }

    async fn handle_on_link(
        &self,
        _peer: &PeerInfo,
        link: &PeerLink,
        request: Packet,
        _max_payload: usize,
    ) -> Packet {
        let mut answer = coap::response_to(&request, ResponseType::Content);
        answer.payload = b"0".to_vec();
        let path = coap::uri_path(&request).unwrap_or_default();
        if path == ["temp"] && coap::observe::observe_value(&request) == Some(0) {
            tokio::spawn(self.0.clone().notify_until_gone(link.observer(&request)));
            coap::set_single(&mut answer, CoapOption::Observe, vec![]);
        }
        answer
    }
}

struct NotFound;

impl Handler for NotFound {
    async fn handle(&self, _peer: &PeerInfo, request: Packet) -> Packet {
        coap::response_to(&request, ResponseType::NotFound)
    }
}

async fn listen(sensor: Arc<Sensor>) -> (SocketAddr, watch::Sender<bool>) {
    let uri = EndpointUri {
        scheme: Scheme::Coap,
        addr: "127.0.0.1:0".parse().unwrap(),
    };
    let listener = Listener::bind(uri, Security::NoSec).await.unwrap();
    let addr = listener.local_addr();
    let (stop, shutdown) = watch::channel(false);
    let tuning = TransportTuning::unreliable();
    tokio::spawn(listener.run(Arc::new(Shared(sensor)), tuning, shutdown));
    (addr, stop)
}

async fn client(addr: SocketAddr) -> (PeerLink, watch::Sender<bool>) {
    let mux = DatagramMux::bind("127.0.0.1:0".parse().unwrap(), false)
        .await
        .unwrap()
        .0;
    let session = mux.connect(addr);
    let info = privgw::transport::DatagramSession::peer_info(&session);
    let (stop, shutdown) = watch::channel(false);
    let tuning = TransportTuning::unreliable();
    let (link, _task) = spawn_session(session, info, Arc::new(NotFound), tuning, shutdown);
    (link, stop)
}

/// Observe `/temp`: the first response and notifications 1, 2 (sent CON, ACKed by the
/// serve loop), 3 arrive in order; cancelling sends Observe = 1 and the listener's next
/// notification finds no observer.
#[tokio::test]
async fn observe_over_udp_delivers_notifications_in_order_and_cancel_removes_the_observer() {
    let sensor = Arc::new(Sensor::default());
    let (addr, _stop) = listen(sensor.clone()).await;
    let (link, _client_stop) = client(addr).await;
    let mut observation = tokio::time::timeout(WAIT, link.observe(get("/temp")))
        .await
        .expect("registered in time")
        .expect("a first response");
    assert_eq!(observation.first().payload, b"0");
    assert!(
        observation
            .first()
            .get_first_option(CoapOption::Observe)
            .is_some(),
        "added as an observer"
    );
    for expected in ["1", "2", "3"] {
        let n = tokio::time::timeout(WAIT, observation.next())
            .await
            .expect("a notification in time")
            .expect("the observation goes on");
        assert_eq!(String::from_utf8(n.payload).unwrap(), expected);
    }
    observation.cancel();
    tokio::time::timeout(WAIT, sensor.done.notified())
        .await
        .expect("the listener's observer is removed");
    assert_eq!(
        *sensor.outcome.lock().unwrap(),
        Some(Err(ObserverError::NotObserved))
    );
}

/// A resource that is not observable answers without Observe: the observation yields the
/// response and then ends.
#[tokio::test]
async fn observing_a_plain_resource_yields_the_response_and_ends() {
    let (addr, _stop) = listen(Arc::new(Sensor::default())).await;
    let (link, _client_stop) = client(addr).await;
    let mut observation = tokio::time::timeout(WAIT, link.observe(get("/plain")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(observation.first().payload, b"0");
    assert!(
        observation
            .first()
            .get_first_option(CoapOption::Observe)
            .is_none()
    );
    let end = tokio::time::timeout(WAIT, observation.next())
        .await
        .unwrap();
    assert!(end.is_none(), "not added: nothing follows");
}
