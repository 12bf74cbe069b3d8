//! Runs the built `eventcore` binary against a real PostgreSQL:
//! `DATABASE_URL` if set, otherwise the throwaway cluster of
//! `scripts/dev-db`. Every test works in a schema of its own.

// Backup and restore on throwaway clusters of its own.
#[path = "cli/restore.rs"]
mod restore;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use eventcore::{AppendRequest, EventStore, ExpectedVersion, NewEvent, StreamId};
use eventcore_postgres::{PostgresConfigBuilder, PostgresEventStore, SCHEMA_VERSION};
use eventcore_test_support::{fresh_schema, test_database_url};
use serde_json::{Value, json};

/// The binary, pointed at the test database (through `DATABASE_URL`) and
/// at `schema` (through `--schema`).
fn eventcore(schema: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_eventcore"));
    cmd.env("DATABASE_URL", test_database_url())
        .env_remove("EVENTCORE_SCHEMA")
        .env_remove("RUST_LOG")
        .args(["--schema", schema]);
    cmd
}

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The single JSON object on stdout.
    fn json(&self) -> Value {
        let lines = self.json_lines();
        assert_eq!(lines.len(), 1, "expected one JSON line: {self:?}");
        lines.into_iter().next().unwrap()
    }

    /// Every stdout line, parsed as JSON.
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
            .collect()
    }
}

fn run(schema: &str, args: &[&str]) -> Run {
    let out = eventcore(schema)
        .args(args)
        .output()
        .expect("run eventcore");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

/// Runs and insists on exit status 0.
fn run_ok(schema: &str, args: &[&str]) -> Run {
    let r = run(schema, args);
    assert_eq!(r.code, Some(0), "eventcore {args:?} failed: {r:?}");
    r
}

/// Runs `f` against a store on `schema` (which must be initialized).
fn with_store<T>(schema: &str, f: impl AsyncFnOnce(&PostgresEventStore) -> T) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let config = PostgresConfigBuilder::new()
            .database_url(test_database_url())
            .schema(schema)
            .max_connections(2)
            .min_connections(0)
            .build()
            .expect("valid config");
        let store = PostgresEventStore::new(config).await.expect("connect");
        let result = f(&store).await;
        store.pool().close().await;
        result
    })
}

/// Appends `amounts` as `Deposited` events to `stream` in one append and
/// returns the events as sent.
fn seed(schema: &str, stream: &str, amounts: &[u64]) -> Vec<NewEvent> {
    let events: Vec<NewEvent> = amounts
        .iter()
        .map(|a| NewEvent::raw("Deposited", json!({ "amount": a })))
        .collect();
    let stream = StreamId::new(stream).expect("valid stream id");
    let request = AppendRequest::new().append(stream, ExpectedVersion::Any, events.clone());
    with_store(schema, async |store| {
        store.append(request).await.expect("append");
    });
    events
}

fn event_ids(events: &[NewEvent]) -> Vec<String> {
    events.iter().map(|e| e.event_id.to_string()).collect()
}

fn ids_of(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["event_id"].as_str().expect("event_id").to_owned())
        .collect()
}

/// Asserts that a health report (JSON) is healthy. The one problem
/// tolerated is one this test cannot control: some other client of the
/// shared cluster holding a transaction open for long.
fn assert_healthy(r: &Run) {
    let h = r.json();
    assert_eq!(h["database_reachable"], true, "{r:?}");
    assert_eq!(h["schema_version"], SCHEMA_VERSION, "{r:?}");
    assert_eq!(h["expected_schema_version"], SCHEMA_VERSION, "{r:?}");
    assert!(h["read_horizon"].as_u64().is_some(), "{r:?}");
    let problems = h["problems"].as_array().expect("problems");
    let foreign = problems.iter().all(|p| {
        p.as_str()
            .is_some_and(|p| p.contains("transaction has been open"))
    });
    if h["is_healthy"] == true {
        assert!(problems.is_empty(), "{r:?}");
        assert_eq!(r.code, Some(0), "{r:?}");
    } else {
        assert!(
            !problems.is_empty() && foreign,
            "unhealthy after init: {r:?}"
        );
        assert_eq!(r.code, Some(1), "{r:?}");
        eprintln!("note: cluster has a long-running transaction: {problems:?}");
    }
}

#[test]
fn init_twice_succeeds_and_reports_the_version() {
    let schema = fresh_schema();

    let first = run_ok(&schema, &["init", "--json"]).json();
    assert_eq!(first["schema"], schema.as_str());
    assert_eq!(first["schema_version"], SCHEMA_VERSION);
    assert_eq!(first["previous_schema_version"], Value::Null);
    assert_eq!(first["changed"], true);

    let second = run_ok(&schema, &["init"]);
    assert_eq!(
        second.stdout.trim(),
        format!("schema {schema} is already at version {SCHEMA_VERSION}")
    );
    let second_json = run_ok(&schema, &["init", "--json"]).json();
    assert_eq!(second_json["previous_schema_version"], SCHEMA_VERSION);
    assert_eq!(second_json["changed"], false);

    let version = with_store(&schema, async |s| {
        s.schema_version().await.expect("version")
    });
    assert_eq!(version, Some(SCHEMA_VERSION));
}

#[test]
fn stats_count_seeded_events() {
    let schema = fresh_schema();
    run_ok(&schema, &["init"]);

    let empty = run_ok(&schema, &["stats", "--json"]).json();
    assert_eq!(empty["streams"], 0);
    assert_eq!(empty["events"], 0);
    assert_eq!(empty["max_position"], Value::Null);

    seed(&schema, "account-1", &[10, 20, 30]);
    let stats = run_ok(&schema, &["stats", "--json"]).json();
    assert_eq!(stats["schema"], schema.as_str());
    assert_eq!(stats["schema_version"], SCHEMA_VERSION);
    assert_eq!(stats["streams"], 1);
    assert_eq!(stats["events"], 3);
    let last = run_ok(&schema, &["stream", "account-1", "--json"]).json_lines()[2]["position"]
        .as_u64()
        .expect("position");
    assert_eq!(stats["max_position"], last);

    let text = run_ok(&schema, &["stats"]).stdout;
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(rows.contains(&vec!["streams:", "1"]), "{text}");
    assert!(rows.contains(&vec!["events:", "3"]), "{text}");
}

#[test]
fn stream_prints_its_events_in_order() {
    let schema = fresh_schema();
    run_ok(&schema, &["init"]);
    let seeded = seed(&schema, "account-1", &[10, 20, 30]);
    seed(&schema, "account-2", &[99]);

    let lines = run_ok(&schema, &["stream", "account-1", "--json"]).json_lines();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(ids_of(&lines), event_ids(&seeded));
    for (i, (line, sent)) in lines.iter().zip(&seeded).enumerate() {
        assert_eq!(line["stream_id"], "account-1");
        assert_eq!(line["stream_version"], i as u64 + 1);
        assert_eq!(line["event_type"], "Deposited");
        assert_eq!(line["schema_version"], 1);
        assert_eq!(line["data"], json!({ "amount": (i as u64 + 1) * 10 }));
        assert_eq!(
            line["metadata"]["correlation_id"],
            sent.metadata.correlation_id.to_string()
        );
        let recorded_at = line["recorded_at"].as_str().expect("recorded_at");
        assert!(
            chrono::DateTime::parse_from_rfc3339(recorded_at).is_ok(),
            "{recorded_at}"
        );
    }
    let positions: Vec<u64> = lines
        .iter()
        .map(|l| l["position"].as_u64().expect("position"))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");

    // --from and --limit select a window.
    let window = run_ok(
        &schema,
        &[
            "stream",
            "account-1",
            "--from",
            "2",
            "--limit",
            "1",
            "--json",
        ],
    )
    .json_lines();
    assert_eq!(window.len(), 1);
    assert_eq!(window[0]["stream_version"], 2);
    assert_eq!(window[0]["event_id"], seeded[1].event_id.to_string());

    // Text: a header line per event, then its data and metadata.
    let text = run_ok(&schema, &["stream", "account-1"]).stdout;
    let headers: Vec<&str> = text.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(headers.len(), 3, "{text}");
    for (i, header) in headers.iter().enumerate() {
        assert!(
            header.starts_with(&format!("v{}  pos {}  Deposited  ", i + 1, positions[i])),
            "{header}"
        );
    }
    assert!(text.contains(r#"data:     {"amount":20}"#), "{text}");

    // An empty stream prints nothing and says so on stderr.
    let none = run_ok(&schema, &["stream", "account-3"]);
    assert!(none.stdout.is_empty(), "{none:?}");
    assert!(none.stderr.contains("account-3"), "{none:?}");
}

#[test]
fn health_follows_initialization() {
    let schema = fresh_schema();

    // Never initialized: reachable but unhealthy, exit 1.
    let before = run(&schema, &["health", "--json"]);
    assert_eq!(before.code, Some(1), "{before:?}");
    let h = before.json();
    assert_eq!(h["is_healthy"], false);
    assert_eq!(h["database_reachable"], true);
    assert_eq!(h["schema_version"], Value::Null);
    assert_eq!(h["expected_schema_version"], SCHEMA_VERSION);
    let problems = h["problems"].as_array().expect("problems");
    assert!(
        problems
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.contains("schema version"))),
        "{problems:?}"
    );
    let text = run(&schema, &["health"]);
    assert_eq!(text.code, Some(1), "{text:?}");
    assert!(
        text.stdout.lines().any(|l| l == "healthy:            no"),
        "{text:?}"
    );
    assert!(text.stderr.contains("eventcore init"), "{text:?}");

    run_ok(&schema, &["init"]);
    assert_healthy(&run(&schema, &["health", "--json"]));
    let text = run(&schema, &["health"]);
    for label in [
        "database:",
        "schema:",
        "healthy:",
        "database reachable:",
        "database latency:",
        "schema version:",
        "read horizon:",
        "oldest transaction:",
        "pool:",
        "current connections:",
        "problems:",
    ] {
        assert!(
            text.stdout
                .lines()
                .any(|l| l.trim_start().starts_with(label)),
            "no {label:?} in {text:?}"
        );
    }
}

#[test]
fn invalid_stream_ids_and_uninitialized_schemas_are_clear_errors() {
    let schema = fresh_schema();

    let empty = run(&schema, &["stream", ""]);
    assert_eq!(empty.code, Some(2), "{empty:?}");
    assert!(empty.stdout.is_empty(), "{empty:?}");
    assert!(empty.stderr.contains("stream id is empty"), "{empty:?}");
    assert!(empty.stderr.contains("STREAM_ID"), "{empty:?}");

    let control = run(&schema, &["stream", "a\nb"]);
    assert_eq!(control.code, Some(2), "{control:?}");
    assert!(
        control
            .stderr
            .contains("stream id contains control character"),
        "{control:?}"
    );

    for args in [&["stats"][..], &["stream", "account-1"], &["tail"]] {
        let r = run(&schema, args);
        assert_eq!(r.code, Some(2), "{args:?}: {r:?}");
        assert!(
            r.stderr
                .contains(&format!("schema {schema} is not initialized"))
                && r.stderr.contains("eventcore init"),
            "{args:?}: {r:?}"
        );
    }
}

#[test]
fn connection_errors_name_the_server_but_not_the_password() {
    let r = run(
        "eventcore",
        &[
            "--database-url",
            "postgres://admin:hunter2@127.0.0.1:1/db",
            "--connect-timeout",
            "1",
            "health",
        ],
    );
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(
        r.stderr
            .contains("cannot connect to postgres://admin:***@127.0.0.1:1/db"),
        "{r:?}"
    );
    assert!(!r.stderr.contains("hunter2") && !r.stdout.contains("hunter2"));
}

#[test]
fn connections_list_the_servers_clients_and_pool_is_its_alias() {
    let schema = fresh_schema();
    let c = run_ok(&schema, &["connections", "--json"]).json();
    assert!(c["max_connections"].as_i64().unwrap() > 0, "{c}");
    let groups = c["groups"].as_array().expect("groups");
    // This command's own connection is among them.
    assert!(
        groups.iter().any(|g| g["application"] == "eventcore-cli"),
        "{c}"
    );
    let text = run_ok(&schema, &["pool"]).stdout;
    assert!(
        text.contains("client connections of max_connections"),
        "{text}"
    );
    assert!(text.contains("eventcore-cli"), "{text}");
}

/// Reads the child's stdout lines on a thread, so the test can wait with
/// a deadline.
fn line_reader(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The next `n` lines as JSON; generous deadline, since another client of
/// the cluster may briefly hold the read horizon back.
fn next_lines(rx: &mpsc::Receiver<String>, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("line {i} of {n}: {e}"));
            serde_json::from_str(&line).expect("JSON line")
        })
        .collect()
}

#[test]
fn tail_reads_in_global_order_and_follows() {
    let schema = fresh_schema();
    run_ok(&schema, &["init"]);
    let a = seed(&schema, "account-a", &[1, 2]);
    let b = seed(&schema, "account-b", &[3]);
    let all: Vec<String> = event_ids(&a).into_iter().chain(event_ids(&b)).collect();

    let lines = run_ok(&schema, &["tail", "--json"]).json_lines();
    assert_eq!(ids_of(&lines), all);
    let streams: Vec<&str> = lines
        .iter()
        .map(|l| l["stream_id"].as_str().unwrap())
        .collect();
    assert_eq!(streams, ["account-a", "account-a", "account-b"]);
    let first = lines[0]["position"].as_u64().unwrap().to_string();

    let page = run_ok(
        &schema,
        &["tail", "--after", &first, "--limit", "1", "--json"],
    );
    assert_eq!(ids_of(&page.json_lines()), [all[1].clone()]);

    let text = run_ok(&schema, &["tail"]).stdout;
    let headers: Vec<&str> = text.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(headers.len(), 3, "{text}");
    assert!(headers[2].starts_with("account-b  v1  pos "), "{text}");

    // --follow prints what exists, then each new event once, until Ctrl-C.
    let mut child = eventcore(&schema)
        .args(["tail", "--follow", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tail --follow");
    let rx = line_reader(&mut child);
    assert_eq!(ids_of(&next_lines(&rx, 3)), all);
    let c = seed(&schema, "account-c", &[4, 5]);
    let d = seed(&schema, "account-a", &[6]);
    let later = next_lines(&rx, 3);
    let expected: Vec<String> = event_ids(&c).into_iter().chain(event_ids(&d)).collect();
    assert_eq!(ids_of(&later), expected);
    assert_eq!(later[2]["stream_version"], 3);

    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(interrupted.success());
    let status = child.wait().expect("wait for tail");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert!(
        status.success(),
        "tail --follow after Ctrl-C: {status}: {stderr}"
    );
    // Nothing printed twice: the reader sees the end of stdout.
    assert!(
        rx.recv_timeout(Duration::from_secs(10)).is_err(),
        "unexpected extra output"
    );
}

#[test]
fn tail_follow_stops_at_the_limit() {
    let schema = fresh_schema();
    run_ok(&schema, &["init"]);
    let seeded = seed(&schema, "account-1", &[1, 2, 3]);
    let r = run_ok(&schema, &["tail", "--follow", "--limit", "2", "--json"]);
    assert_eq!(ids_of(&r.json_lines()), event_ids(&seeded)[..2]);
}

/// Regression (issue 14, item 10): while a transaction holding an xid is
/// open in another connection, an event committed after it is not
/// readable. `tail` says on stderr which transaction it waits for (its
/// backend pid and age) and, with `--timeout`, gives up with exit status 2
/// instead of waiting forever; once the transaction ends it prints
/// everything.
#[test]
fn tail_names_the_transaction_it_waits_for_and_gives_up_after_the_timeout() {
    use sqlx::Connection;

    let schema = fresh_schema();
    run_ok(&schema, &["init"]);
    let first = seed(&schema, "account-1", &[1]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (mut blocker, pid) = runtime.block_on(async {
        let mut conn = sqlx::PgConnection::connect(test_database_url())
            .await
            .expect("connect");
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .expect("pid");
        sqlx::raw_sql("BEGIN; SELECT pg_current_xact_id();")
            .execute(&mut conn)
            .await
            .expect("open a transaction holding an xid");
        (conn, pid)
    });
    let second = seed(&schema, "account-1", &[2]);

    let r = run(&schema, &["tail", "--timeout", "2", "--json"]);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert_eq!(ids_of(&r.json_lines()), event_ids(&first), "{r:?}");
    assert!(
        r.stderr.contains("waiting for events up to position"),
        "{r:?}"
    );
    assert!(r.stderr.contains("gave up after"), "{r:?}");
    assert!(
        r.stderr
            .contains("held back by the transaction of backend pid"),
        "{r:?}"
    );
    if !r.stderr.contains(&format!("pid {pid} ")) {
        // Another client of the shared cluster held an even older one.
        eprintln!(
            "note: an older transaction than ours was named: {}",
            r.stderr
        );
    }

    runtime.block_on(async {
        sqlx::raw_sql("COMMIT")
            .execute(&mut blocker)
            .await
            .expect("commit");
    });
    let all: Vec<String> = event_ids(&first)
        .into_iter()
        .chain(event_ids(&second))
        .collect();
    let r = run_ok(&schema, &["tail", "--timeout", "30", "--json"]);
    assert_eq!(ids_of(&r.json_lines()), all);
}

/// Holds a runner lease on `projection` in `schema` until the returned
/// sender is dropped (on a thread with its own runtime).
fn hold_lease(schema: &str, projection: &str) -> mpsc::Sender<()> {
    let (release, released) = mpsc::channel::<()>();
    let (held, taken) = mpsc::channel();
    let (schema, projection) = (schema.to_owned(), projection.to_owned());
    thread::spawn(move || {
        with_store(&schema, async |store| {
            use eventcore::CheckpointStore;
            let checkpoints = eventcore_postgres::PostgresCheckpointStore::new(store.clone());
            let lease = checkpoints.try_acquire(&projection).await.unwrap().unwrap();
            held.send(()).unwrap();
            let _ = tokio::task::spawn_blocking(move || released.recv()).await;
            drop(lease);
        });
    });
    taken
        .recv_timeout(Duration::from_secs(30))
        .expect("lease taken");
    release
}

/// A projection row with a checkpoint, as a runner that stopped leaves it.
fn projection_at(schema: &str, projection: &str, position: u64) {
    with_store(schema, async |store| {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO \"{schema}\".projection_checkpoints (projection, position, generation) \
             VALUES ($1, $2, 1)"
        )))
        .bind(projection)
        .bind(position as i64)
        .execute(store.pool())
        .await
        .unwrap();
    });
}

#[test]
fn projections_are_listed_and_actions_refused_while_a_runner_is_active_unless_forced() {
    let schema = fresh_schema();
    run_ok(&schema, &["init"]);
    seed(&schema, "account-1", &[1, 2, 3]);
    let first = run_ok(&schema, &["tail", "--json", "--limit", "1"]).json_lines()[0]["position"]
        .as_u64()
        .unwrap();
    projection_at(&schema, "balances", first);

    let listed = run_ok(&schema, &["projections", "--json"]).json();
    assert_eq!(listed["name"], "balances");
    assert_eq!(listed["checkpoint"], first);
    assert_eq!(listed["lag_events"], 2);
    assert_eq!(listed["runner"], Value::Null);

    let release = hold_lease(&schema, "balances");
    let listed = run_ok(&schema, &["projections", "list", "--json"]).json();
    assert!(listed["runner"]["pid"].as_i64().is_some(), "{listed}");
    let text = run_ok(&schema, &["projections"]).stdout;
    assert!(
        text.contains("balances  (running)") && text.contains("lag:"),
        "{text}"
    );

    let refused = run(&schema, &["projections", "reset", "balances"]);
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(
        refused.stderr.contains("is active") && refused.stderr.contains("force"),
        "{refused:?}"
    );
    let forced = run_ok(
        &schema,
        &[
            "projections",
            "reset",
            "balances",
            "--force",
            "--reason",
            "replay",
            "--json",
        ],
    )
    .json();
    assert_eq!(forced["forced"], true);
    assert_eq!(forced["checkpoint_before"], first);
    assert_eq!(forced["checkpoint_after"], Value::Null);
    drop(release);

    let requested = run_ok(
        &schema,
        &["projections", "rebuild", "balances", "--no-wait", "--json"],
    )
    .json();
    assert_eq!(requested["action"], "rebuild");
    // Following a rebuild nobody picks up gives up after --timeout.
    let waited = run(
        &schema,
        &["projections", "rebuild", "balances", "--timeout", "1"],
    );
    assert_eq!(waited.code, Some(2), "{waited:?}");
    assert!(waited.stderr.contains("the rebuild goes on"), "{waited:?}");

    let history = run_ok(&schema, &["projections", "history", "--json"]).json_lines();
    let actions: Vec<&str> = history
        .iter()
        .map(|h| h["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["rebuild", "rebuild", "reset"]);
    assert_eq!(history[2]["reason"], "replay");

    let unknown = run(&schema, &["projections", "skip", "nope", "1"]);
    assert_eq!(unknown.code, Some(2));
    assert!(unknown.stderr.contains("known: balances"), "{unknown:?}");
}

#[test]
fn export_import_round_trip_is_byte_identical() {
    let (source, target) = (fresh_schema(), fresh_schema());
    run_ok(&source, &["init"]);
    run_ok(&target, &["init"]);
    seed(&source, "account-1", &[1, 2]);
    seed(&source, "order-1", &[3]);
    seed(&source, "account-2", &[4]);
    let exported = run_ok(&source, &["export"]);
    assert_eq!(exported.stdout.lines().count(), 4);
    assert!(
        exported.stderr.contains("exported 4 events of 3 streams"),
        "{exported:?}"
    );

    let dir = std::env::temp_dir().join(fresh_schema());
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("all.jsonl");
    std::fs::write(&file, &exported.stdout).unwrap();
    let file = file.to_str().unwrap();
    let imported = run_ok(&target, &["import", "--input", file, "--json"]).json();
    assert_eq!(imported["imported"], 4);
    let again = run_ok(&target, &["import", "-i", file, "--json"]).json();
    assert_eq!(again["already_present"], 4);
    let out = dir.join("back.jsonl");
    let summary = run_ok(&target, &["export", "-o", out.to_str().unwrap(), "--json"]).json();
    assert_eq!(summary["events"], 4);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), exported.stdout);

    let accounts = run_ok(&source, &["export", "--category", "account-"]).stdout;
    assert_eq!(accounts.lines().count(), 3);
    let one = run_ok(&source, &["export", "--stream", "order-1"]).stdout;
    assert!(
        one.contains("\"stream_id\":\"order-1\"") && one.lines().count() == 1,
        "{one}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn verify_passes_on_a_sound_store_and_exits_1_when_the_trigger_is_off() {
    let schema = fresh_schema();
    run_ok(&schema, &["init"]);
    seed(&schema, "account-1", &[1]);
    let report = run_ok(&schema, &["verify", "--json"]).json();
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["checks"].as_array().unwrap().len(), 6);
    with_store(&schema, async |store| {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE \"{schema}\".events DISABLE TRIGGER events_no_truncate"
        )))
        .execute(store.pool())
        .await
        .unwrap();
    });
    let failed = run(&schema, &["verify"]);
    assert_eq!(failed.code, Some(1), "{failed:?}");
    assert!(
        failed.stdout.contains("FAIL  append-only trigger"),
        "{failed:?}"
    );
}

#[test]
fn no_colour_codes_reach_pipes() {
    let schema = fresh_schema();
    run_ok(&schema, &["init"]);
    for args in [
        &["health"][..],
        &["verify"],
        &["projections"],
        &["stream", "none-here"],
        &["--schema", "missing_schema_x", "stats"],
    ] {
        for no_color in [None, Some("1")] {
            let mut cmd = eventcore(&schema);
            cmd.args(args).env("RUST_LOG", "debug");
            if let Some(v) = no_color {
                cmd.env("NO_COLOR", v);
            }
            let out = cmd.output().expect("run");
            for stream in [&out.stdout, &out.stderr] {
                assert!(
                    !stream.windows(2).any(|w| w == b"\x1b["),
                    "escape codes from {args:?}: {}",
                    String::from_utf8_lossy(stream)
                );
            }
        }
    }
}

#[test]
fn every_command_documents_examples() {
    for args in [
        &["--help"][..],
        &["init", "--help"],
        &["health", "--help"],
        &["stats", "--help"],
        &["stream", "--help"],
        &["tail", "--help"],
        &["connections", "--help"],
        &["projections", "--help"],
        &["projections", "reset", "--help"],
        &["projections", "rebuild", "--help"],
        &["projections", "skip", "--help"],
        &["export", "--help"],
        &["import", "--help"],
        &["verify", "--help"],
        &["serve", "--help"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_eventcore"))
            .args(args)
            .output()
            .unwrap();
        let help = String::from_utf8(out.stdout).unwrap();
        assert!(
            help.contains("Examples:\n  $ ") && help.contains("  $ eventcore "),
            "{args:?}: {help}"
        );
        assert!(help.contains("--json"), "{args:?}: {help}");
    }
}

/// `eventcore serve` on a free port; its address and the child.
fn serve(schema: &str, extra: &[&str]) -> (String, Child) {
    let mut child = eventcore(schema)
        .args(["serve", "--json", "--bind"])
        .args(if extra.contains(&"--token") {
            ["0.0.0.0:0"]
        } else {
            ["127.0.0.1:0"]
        })
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let rx = line_reader(&mut child);
    let first = next_lines(&rx, 1).remove(0);
    let port = first["listening"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    (format!("127.0.0.1:{port}"), child)
}

/// A GET over a plain connection: status, headers, body.
fn get(addr: &str, path: &str, headers: &[&str]) -> (u16, String, String) {
    let mut conn = TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    conn.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

#[test]
fn serve_renders_every_page_and_follows_all_live_without_the_password() {
    let schema = fresh_schema();
    run_ok(&schema, &["init"]);
    seed(&schema, "account-<1>", &[7]);
    projection_at(&schema, "balances", 1);
    let (addr, mut child) = serve(&schema, &[]);

    let (code, head, _) = get(&addr, "/", &[]);
    assert_eq!(code, 303, "{head}");
    let (code, head, page) = get(&addr, "/streams?prefix=account-", &[]);
    assert_eq!(code, 200, "{head}");
    assert!(
        head.to_lowercase().contains("content-security-policy"),
        "{head}"
    );
    // Escaped, and linked with the path escaped.
    assert!(
        page.contains("account-&lt;1&gt;") && page.contains("/streams/account-%3C1%3E"),
        "{page}"
    );
    let (code, _, page) = get(&addr, "/streams/account-%3C1%3E", &[]);
    assert_eq!(code, 200);
    assert!(
        page.contains("Deposited") && page.contains("&quot;amount&quot;: 7"),
        "{page}"
    );
    assert_eq!(get(&addr, "/streams/nothing-here", &[]).0, 404);
    let (code, _, page) = get(&addr, "/all", &[]);
    assert_eq!(code, 200);
    assert!(
        page.contains("/static/live.js") && page.contains("Deposited"),
        "{page}"
    );
    let (code, _, page) = get(&addr, "/projections", &[]);
    assert_eq!(code, 200);
    assert!(page.contains("balances"), "{page}");
    let (code, _, page) = get(&addr, "/health", &[]);
    assert!(code == 200 || code == 503, "{code}");
    assert!(page.contains("schema version"), "{page}");
    assert_eq!(get(&addr, "/static/live.js", &[]).0, 200);
    for path in ["/streams", "/all", "/projections", "/health"] {
        let (_, _, page) = get(&addr, path, &[]);
        assert!(page.contains("schema"), "{path}");
        // The test URL may carry no password; the page shows the URL's
        // user and host, masked wherever a password would be.
        if let Some(password) = test_database_url()
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .and_then(|(userinfo, _)| userinfo.split_once(':'))
            .map(|(_, pw)| pw)
        {
            assert!(!page.contains(password), "{path} shows the password");
        }
    }

    // $all live: the events after position 0, as server-sent rows.
    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        conn,
        "GET /all/live?after=0 HTTP/1.1\r\nHost: {addr}\r\n\r\n"
    )
    .unwrap();
    let mut seen = String::new();
    let mut buf = [0; 4096];
    while !seen.contains("event: row") {
        let n = conn.read(&mut buf).expect("SSE data");
        assert!(n > 0, "stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("text/event-stream"), "{seen}");
    assert!(seen.contains("account-&lt;1&gt;"), "{seen}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn serve_elsewhere_needs_a_token_and_checks_it() {
    let schema = fresh_schema();
    run_ok(&schema, &["init"]);
    let refused = run(&schema, &["serve", "--bind", "0.0.0.0:0"]);
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(refused.stderr.contains("without a token"), "{refused:?}");

    let (addr, mut child) = serve(&schema, &["--token", "s3cret"]);
    let (code, head, _) = get(&addr, "/streams", &[]);
    assert_eq!(code, 401, "{head}");
    assert_eq!(
        get(&addr, "/streams", &["Authorization: Bearer wrong"]).0,
        401
    );
    assert_eq!(
        get(&addr, "/streams", &["Authorization: Bearer s3cret"]).0,
        200
    );
    // A browser: ?token= once, then the cookie.
    let (code, head, _) = get(&addr, "/projections?token=s3cret", &[]);
    assert_eq!(code, 303, "{head}");
    assert!(head.contains("eventcore_token=s3cret; HttpOnly"), "{head}");
    assert!(head.contains("location: /projections"), "{head}");
    assert_eq!(
        get(&addr, "/projections", &["Cookie: eventcore_token=s3cret"]).0,
        200
    );
    assert_eq!(get(&addr, "/projections?token=nope", &[]).0, 401);
    child.kill().unwrap();
    child.wait().unwrap();
}
