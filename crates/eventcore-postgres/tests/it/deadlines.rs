//! Faults between the client and the server, through a loopback proxy the
//! test controls: a server that goes silent, replies that are lost after a
//! commit, and a proxy that accepts and hangs up while the server is down.

use std::{
    net::SocketAddr,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use eventcore::{AppendRequest, Error, EventStore, ExpectedVersion, NewEvent, StreamId};
use eventcore_postgres::PostgresEventStore;
use eventcore_test_support::{config, store_with, test_database_url};
use sqlx::{Connection as _, postgres::PgConnectOptions};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    /// Forwards both ways.
    Forward = 0,
    /// Forwards requests, drops the server's replies: a commit whose
    /// acknowledgement is lost.
    DropReplies = 1,
    /// Drops everything and keeps the sockets open: a silent server.
    Silent = 2,
    /// Accepts new connections and closes them at once: a proxy whose
    /// server is down.
    HangUp = 3,
}

struct Proxy {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    accepted: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start() -> Self {
        let options = PgConnectOptions::from_str(test_database_url()).unwrap();
        let upstream = format!("{}:{}", options.get_host(), options.get_port());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(Mode::Forward as u8));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (m, n) = (mode.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                n.fetch_add(1, Ordering::Relaxed);
                if m.load(Ordering::Relaxed) == Mode::HangUp as u8 {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, m.clone(), false));
                tokio::spawn(pump(sr, cw, m.clone(), true));
            }
        });
        Self {
            addr,
            mode,
            accepted,
        }
    }

    fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::Relaxed);
    }

    /// The test database's URL, through the proxy.
    fn url(&self) -> String {
        let options = PgConnectOptions::from_str(test_database_url()).unwrap();
        let upstream = format!("{}:{}", options.get_host(), options.get_port());
        assert!(
            test_database_url().contains(&upstream),
            "DATABASE_URL must name host:port for the proxy tests"
        );
        test_database_url().replacen(&upstream, &self.addr.to_string(), 1)
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<AtomicU8>,
    replies: bool,
) {
    let mut buf = vec![0_u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let drop_it = match mode.load(Ordering::Relaxed) {
            m if m == Mode::Silent as u8 => true,
            m if m == Mode::DropReplies as u8 => replies,
            _ => false,
        };
        if !drop_it && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// `call`'s result; a call with no bound of its own (the bug these tests
/// guard against) fails the test after 30 s instead of hanging it.
async fn answered<T>(call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the call returned within 30 s")
}

fn one(stream: &StreamId) -> AppendRequest {
    AppendRequest::new().append(
        stream.clone(),
        ExpectedVersion::Any,
        vec![NewEvent::raw("Tick", serde_json::json!({}))],
    )
}

async fn through(proxy: &Proxy) -> PostgresEventStore {
    through_with(proxy, 2).await
}

async fn through_with(proxy: &Proxy, max_connections: u32) -> PostgresEventStore {
    store_with(
        config()
            .database_url(proxy.url())
            // Its own name, so the test can terminate its backends alone.
            .application_name(format!("ec-test-{}", uuid::Uuid::now_v7().simple()))
            .connect_timeout(Duration::from_millis(500))
            .query_timeout(Duration::from_millis(500))
            .max_connections(max_connections)
            .build()
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn a_silent_server_fails_calls_at_the_client_deadline() {
    // Regression: nothing bounded a request on the client side, so a
    // server that accepted the connection and went silent hung `append`.
    let proxy = Proxy::start().await;
    let store = through(&proxy).await;
    let stream = StreamId::new("silent-1").unwrap();
    store.append(one(&stream)).await.unwrap();
    proxy.set(Mode::Silent);
    // connect_timeout + query_timeout + the client's 1 s margin, and slack.
    let bound = Duration::from_secs(4);

    let started = Instant::now();
    let err = answered(store.append(one(&stream))).await.unwrap_err();
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());
    assert!(
        err.may_have_committed(),
        "a write without an answer: {err:?}"
    );
    assert!(err.is_transient());

    let started = Instant::now();
    let err = answered(store.read_stream(&stream, Default::default(), 10))
        .await
        .unwrap_err();
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());
    assert!(
        matches!(err, Error::Timeout { .. } | Error::Unavailable { .. }),
        "{err:?}"
    );
    assert!(!err.may_have_committed());
}

#[tokio::test]
async fn a_lost_acknowledgement_is_outcome_unknown_and_a_resend_settles_it() {
    let proxy = Proxy::start().await;
    let store = through(&proxy).await;
    let stream = StreamId::new("lost-ack-1").unwrap();
    store.append(one(&stream)).await.unwrap();
    proxy.set(Mode::DropReplies);
    let request = one(&stream);
    let err = answered(store.append(request.clone())).await.unwrap_err();
    assert!(
        matches!(err, Error::OutcomeUnknown { .. }),
        "the append reached the server; only its answer was lost: {err:?}"
    );
    proxy.set(Mode::Forward);
    // It did commit: the re-send finds it and says so.
    let outcome = store.append(request).await.unwrap();
    assert!(outcome.replayed, "{outcome:?}");
    assert_eq!(store.stream_version(&stream).await.unwrap().get(), 2);
}

#[tokio::test]
async fn a_proxy_that_hangs_up_is_not_hammered() {
    // Regression: a failed connect was taken for a stale pooled connection
    // and retried at once, up to a pool's worth per call: thousands of
    // connects in a second-long outage.
    let proxy = Proxy::start().await;
    let store = through_with(&proxy, 16).await;
    let stream = StreamId::new("hangup-1").unwrap();
    store.append(one(&stream)).await.unwrap();
    // Every open connection dies, and new ones are refused by hanging up.
    proxy.set(Mode::HangUp);
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()")
        .bind(&store.config().application_name)
        .execute(&mut sqlx::PgConnection::connect(test_database_url()).await.unwrap())
        .await
        .unwrap();
    let before = proxy.accepted.load(Ordering::Relaxed);
    let started = Instant::now();
    let err = answered(store.append(one(&stream))).await.unwrap_err();
    let connects = proxy.accepted.load(Ordering::Relaxed) - before;
    assert!(err.is_transient(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // sqlx backs off between connects within one acquire timeout (500 ms).
    assert!(connects < 16, "{connects} connects for one call");
}

/// Regression: a read-your-writes wait asked a silent replica without a
/// bound of its own, so it returned only at the pool's client deadline
/// (connect + query timeout + margin: 11 s here) whatever `timeout` the
/// caller gave.
#[tokio::test]
async fn a_silent_replica_ends_a_replica_wait_at_its_timeout() {
    let proxy = Proxy::start().await;
    let store = PostgresEventStore::new(
        config()
            // The primary as its own "replica", through the proxy: the
            // wait's question needs no standby to be asked.
            .read_replica(proxy.url())
            .connect_timeout(Duration::from_secs(5))
            .query_timeout(Duration::from_secs(5))
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    store.initialize().await.unwrap();
    let stream = StreamId::new("silent-replica-1").unwrap();
    let outcome = store.append(one(&stream)).await.unwrap();
    let token = store.commit_token(&outcome).await.unwrap();
    store
        .wait_for_replicas(&token, Duration::from_secs(20))
        .await
        .unwrap();
    proxy.set(Mode::Silent);
    let started = Instant::now();
    let err = answered(store.wait_for_replicas(&token, Duration::from_millis(500)))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(err, eventcore_postgres::PostgresError::ReplicaBehind { .. }),
        "{err:?}"
    );
}
