//! `verify`: checks, one by one, what the store relies on in its schema.

use serde::Serialize;
use sqlx::{Connection, Row};

use super::sql::{self, fill};
use crate::{
    APPEND_ONLY_SQLSTATE, PostgresError, PostgresEventStore,
    error::{db_error_parts, sqlstate},
    schema::{self, SCHEMA_VERSION},
};

/// Streams or ids listed at most per failed check.
const SHOWN: i64 = 10;

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Holds.
    Pass,
    /// Holds as far as could be seen, with a caveat (say, a probe that
    /// could not run).
    Warn,
    /// Does not hold.
    Fail,
    /// Not checked: an earlier check failed in a way that makes it moot.
    Skipped,
}

/// One check and what it found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What is checked, e.g. `append-only trigger`.
    pub name: &'static str,
    /// The outcome.
    pub status: CheckStatus,
    /// What was found, for people.
    pub detail: String,
}

/// Everything [`PostgresEventStore::verify`] checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The schema.
    pub schema: String,
    /// Its version per the ledger (`None`: not initialized).
    pub schema_version: Option<i32>,
    /// Streams with events.
    pub streams: Option<i64>,
    /// Events.
    pub events: Option<i64>,
    /// Each check, in order.
    pub checks: Vec<Check>,
}

impl VerifyReport {
    /// Whether no check failed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.status != CheckStatus::Fail)
    }
}

fn check(name: &'static str, status: CheckStatus, detail: impl Into<String>) -> Check {
    Check {
        name,
        status,
        detail: detail.into(),
    }
}

impl PostgresEventStore {
    /// Checks what the store relies on and reports each finding: the
    /// migration ledger, the tables, indexes, function and triggers, the
    /// unique constraints, that the append-only trigger really refuses a
    /// change (tried on the oldest event in a transaction that is rolled
    /// back), that every stream's versions run 1..n without gaps and match
    /// its stream row, and that no event id is stored twice. The last two
    /// read every event: minutes on a large store. Database problems are
    /// findings, not errors; an error means the checks could not run.
    /// Behind a transaction pooler it refuses with
    /// [`PostgresError::InvalidConfig`]: run it on a direct connection.
    pub async fn verify(&self) -> Result<VerifyReport, PostgresError> {
        const OP: &str = "verify";
        let schema = self.config().schema.clone();
        let mut report = VerifyReport {
            schema: schema.clone(),
            schema_version: None,
            streams: None,
            events: None,
            checks: Vec::new(),
        };
        if !self.named() {
            // Its checks run for long on one connection: through a
            // transaction pooler that takes one transaction, which would
            // hold every `$all` reader back for as long.
            return Err(PostgresError::InvalidConfig(
                "verify needs a direct connection: run it with a store configured \
                 without Pooler::Transaction (e.g. `eventcore verify` on the primary's URL)"
                    .into(),
            ));
        }
        let map = |e| PostgresError::from(self.map_err(OP, e));
        let mut conn = self
            .db()
            .bounded(OP, async {
                self.db().detached().await.map_err(|e| self.map_err(OP, e))
            })
            .await?;
        let version = schema::read_version(&mut conn, self.sql())
            .await
            .map_err(map)?;
        report.schema_version = version;
        let Some(version) = version else {
            report.checks.push(check(
                "migration ledger",
                CheckStatus::Fail,
                format!("schema {schema} is not initialized: run `eventcore init`"),
            ));
            return Ok(report);
        };

        // The ledger: every migration of this release up to the recorded
        // version, by name, and nothing else.
        let ledger = sqlx::query(fill(sql::SELECT_LEDGER, &schema))
            .persistent(self.named())
            .fetch_all(&mut *conn)
            .await
            .map_err(map)?;
        let found: Vec<(i32, String)> = ledger
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(map)?;
        let expected: Vec<(i32, String)> = schema::migration_names()
            .filter(|(v, _)| *v <= version)
            .map(|(v, n)| (v, n.to_owned()))
            .collect();
        let mut problems = Vec::new();
        for (v, name) in &expected {
            match found.iter().find(|(fv, _)| fv == v) {
                None => problems.push(format!("migration {v} ({name}) not recorded")),
                Some((_, fname)) if fname != name => problems.push(format!(
                    "migration {v} recorded as {fname:?}, expected {name:?}"
                )),
                _ => {}
            }
        }
        for (v, name) in found.iter().filter(|(v, _)| *v > SCHEMA_VERSION) {
            problems.push(format!(
                "migration {v} ({name}) is newer than this release knows ({SCHEMA_VERSION})"
            ));
        }
        report.checks.push(if !problems.is_empty() {
            check("migration ledger", CheckStatus::Fail, problems.join("; "))
        } else if version < SCHEMA_VERSION {
            check(
                "migration ledger",
                CheckStatus::Fail,
                format!("at version {version}, this release needs {SCHEMA_VERSION}: run `eventcore init`"),
            )
        } else {
            check(
                "migration ledger",
                CheckStatus::Pass,
                format!("versions 1..{version} recorded, names as shipped"),
            )
        });

        let known = version.min(SCHEMA_VERSION);
        let missing = schema::find_damage(&mut conn, &schema, known)
            .await
            .map_err(map)?;
        let damaged = !missing.is_empty();
        report.checks.push(if damaged {
            check(
                "tables, indexes, functions, triggers",
                CheckStatus::Fail,
                missing.join(", "),
            )
        } else {
            check(
                "tables, indexes, functions, triggers",
                CheckStatus::Pass,
                "every object present and enabled",
            )
        });

        let mut constraints = vec![
            ("event_streams_pkey", "p"),
            ("events_pkey", "p"),
            ("events_event_id_key", "u"),
            ("events_stream_version_key", "u"),
        ];
        if known >= 2 {
            constraints.extend([
                ("projection_checkpoints_pkey", "p"),
                ("projection_skips_pkey", "p"),
            ]);
        }
        if known >= 7 {
            constraints.push(("projection_operations_pkey", "p"));
        }
        let (names, kinds): (Vec<&str>, Vec<&str>) = constraints.iter().copied().unzip();
        let absent: Vec<String> = sqlx::query_scalar(sql::SELECT_MISSING_CONSTRAINTS)
            .persistent(self.named())
            .bind(&schema)
            .bind(&names)
            .bind(&kinds)
            .fetch_all(&mut *conn)
            .await
            .map_err(map)?;
        report.checks.push(if absent.is_empty() {
            check(
                "constraints",
                CheckStatus::Pass,
                format!(
                    "{} (unique positions, event ids, stream versions)",
                    names.join(", ")
                ),
            )
        } else {
            check(
                "constraints",
                CheckStatus::Fail,
                format!("missing or not valid: {}", absent.join(", ")),
            )
        });

        report
            .checks
            .push(self.check_triggers(&mut conn, &schema).await?);

        if damaged {
            for name in ["stream versions", "unique event ids"] {
                report
                    .checks
                    .push(check(name, CheckStatus::Skipped, "the schema is damaged"));
            }
            return Ok(report);
        }
        let counts = sqlx::query(fill(sql::SELECT_COUNTS, &schema))
            .persistent(self.named())
            .fetch_one(&mut *conn)
            .await
            .map_err(map)?;
        report.streams = Some(counts.try_get(0).map_err(map)?);
        report.events = Some(counts.try_get(1).map_err(map)?);

        let gaps = sqlx::query(fill(sql::SELECT_VERSION_GAPS, &schema))
            .persistent(self.named())
            .bind(SHOWN)
            .fetch_all(&mut *conn)
            .await
            .map_err(map)?;
        report.checks.push(match gaps.first() {
            None => check(
                "stream versions",
                CheckStatus::Pass,
                "every stream's versions run 1..n without gaps and match its stream row",
            ),
            Some(first) => {
                let total: i64 = first.try_get(5).map_err(map)?;
                let mut shown = Vec::new();
                for row in &gaps {
                    let stream: String = row.try_get(0).map_err(map)?;
                    let n: i64 = row.try_get(1).map_err(map)?;
                    let lo: Option<i64> = row.try_get(2).map_err(map)?;
                    let hi: Option<i64> = row.try_get(3).map_err(map)?;
                    let recorded: Option<i64> = row.try_get(4).map_err(map)?;
                    shown.push(format!(
                        "'{stream}': {n} events, versions {}..{}, stream row at {}",
                        lo.map_or("-".into(), |v| v.to_string()),
                        hi.map_or("-".into(), |v| v.to_string()),
                        recorded.map_or("none".into(), |v| v.to_string()),
                    ));
                }
                check(
                    "stream versions",
                    CheckStatus::Fail,
                    format!("{total} stream(s) inconsistent: {}", shown.join("; ")),
                )
            }
        });

        let duplicates = sqlx::query(fill(sql::SELECT_DUPLICATE_IDS, &schema))
            .persistent(self.named())
            .bind(SHOWN)
            .fetch_all(&mut *conn)
            .await
            .map_err(map)?;
        report.checks.push(if duplicates.is_empty() {
            check(
                "unique event ids",
                CheckStatus::Pass,
                "no event id is stored twice",
            )
        } else {
            let ids: Vec<String> = duplicates
                .iter()
                .map(|r| {
                    let id: uuid::Uuid = r.try_get(0)?;
                    let n: i64 = r.try_get(1)?;
                    Ok(format!("{id} ({n} times)"))
                })
                .collect::<Result<_, sqlx::Error>>()
                .map_err(map)?;
            check("unique event ids", CheckStatus::Fail, ids.join(", "))
        });
        Ok(report)
    }

    /// The append-only triggers in the catalog (before update/delete per
    /// row, before truncate, calling `refuse_event_mutation`, enabled), and
    /// a real refusal of an update of the oldest event.
    async fn check_triggers(
        &self,
        conn: &mut sqlx::PgConnection,
        schema: &str,
    ) -> Result<Check, PostgresError> {
        const NAME: &str = "append-only trigger";
        let map = |e| PostgresError::from(self.map_err("verify", e));
        let rows = sqlx::query(sql::SELECT_EVENT_TRIGGERS)
            .persistent(self.named())
            .bind(schema)
            .fetch_all(&mut *conn)
            .await
            .map_err(map)?;
        let mut row_guard = false;
        let mut truncate_guard = false;
        for r in &rows {
            let function: String = r.try_get(1).map_err(map)?;
            let enabled: bool = r.try_get(2).map_err(map)?;
            let before: bool = r.try_get(3).map_err(map)?;
            let per_row: bool = r.try_get(4).map_err(map)?;
            let (update, delete, truncate): (bool, bool, bool) = (
                r.try_get(5).map_err(map)?,
                r.try_get(6).map_err(map)?,
                r.try_get(7).map_err(map)?,
            );
            if function != "refuse_event_mutation" || !enabled || !before {
                continue;
            }
            row_guard |= per_row && update && delete;
            truncate_guard |= !per_row && truncate;
        }
        let mut missing = Vec::new();
        if !row_guard {
            missing
                .push("no enabled BEFORE UPDATE OR DELETE row trigger calls refuse_event_mutation");
        }
        if !truncate_guard {
            missing.push("no enabled BEFORE TRUNCATE trigger calls refuse_event_mutation");
        }
        if !missing.is_empty() {
            return Ok(check(NAME, CheckStatus::Fail, missing.join("; ")));
        }
        // The catalog can be right and the function wrong: try it, and
        // roll back whatever happens.
        let mut tx = conn.begin().await.map_err(map)?;
        let probe = async {
            sqlx::query("SET LOCAL lock_timeout = '2s'")
                .persistent(self.named())
                .execute(&mut *tx)
                .await?;
            sqlx::query(fill(sql::PROBE_APPEND_ONLY, schema))
                .persistent(self.named())
                .execute(&mut *tx)
                .await
        }
        .await;
        let _ = tx.rollback().await;
        Ok(match probe {
            Ok(done) if done.rows_affected() == 0 => check(
                NAME,
                CheckStatus::Pass,
                "triggers in place (no event to try an update on)",
            ),
            Ok(_) => check(
                NAME,
                CheckStatus::Fail,
                "an UPDATE of an event went through (rolled back): the trigger function does not refuse",
            ),
            Err(e) => match db_error_parts(&e) {
                Some((code, _)) if code == APPEND_ONLY_SQLSTATE => check(
                    NAME,
                    CheckStatus::Pass,
                    "UPDATE, DELETE and TRUNCATE refused; an UPDATE tried on the oldest event was refused (EC001)",
                ),
                Some((code, _)) if code == sqlstate::READ_ONLY_SQL_TRANSACTION => check(
                    NAME,
                    CheckStatus::Warn,
                    "triggers in place; not tried: the server is read-only (a standby?)",
                ),
                _ => check(
                    NAME,
                    CheckStatus::Warn,
                    format!(
                        "triggers in place; the update probe failed otherwise: {}",
                        crate::redact_secrets(&e.to_string())
                    ),
                ),
            },
        })
    }
}
