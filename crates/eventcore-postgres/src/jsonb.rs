//! Event columns on the wire: payloads as `jsonb` text without a
//! client-side parse, custom metadata and timestamps decoded directly.
//!
//! sqlx's `Json<T>` runs serde both ways. A payload is already JSON text on
//! the way in ([`EventData`] checked it when it was built) and the server
//! parses it again into `jsonb`, which it then prints back as valid JSON on
//! the way out. Parsing it a third time in the client, only to keep the same
//! text, was ~10 % of the client's CPU when reading `$all`.

use chrono::{DateTime, Utc};
use std::borrow::Cow;

use eventcore::EventData;
use sqlx::{
    Decode, Encode, Postgres, Type,
    encode::IsNull,
    error::BoxDynError,
    postgres::{
        PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueFormat, PgValueRef, types::Oid,
    },
};

/// `pg_type` oids of `jsonb` and `jsonb[]`: fixed since PostgreSQL 9.4.
const JSONB_OID: Oid = Oid(3802);
const JSONB_ARRAY_OID: Oid = Oid(3807);

/// The version byte that starts `jsonb`'s binary wire format (the only one
/// PostgreSQL has).
const JSONB_FORMAT_VERSION: u8 = 1;

/// JSON text to bind as a `jsonb` parameter (a payload, which
/// [`EventData`] checked when it was built, or custom metadata).
#[derive(Clone, Copy)]
pub(crate) struct JsonbParam<'a>(pub(crate) &'a str);

impl Type<Postgres> for JsonbParam<'_> {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(JSONB_OID)
    }
}

impl PgHasArrayType for JsonbParam<'_> {
    fn array_type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(JSONB_ARRAY_OID)
    }
}

impl Encode<'_, Postgres> for JsonbParam<'_> {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(JSONB_FORMAT_VERSION);
        buf.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }
}

/// A `jsonb` value's JSON text, as the server printed it.
fn jsonb_text<'r>(value: &PgValueRef<'r>) -> Result<&'r [u8], BoxDynError> {
    let binary = value.format() == PgValueFormat::Binary;
    let bytes = value.as_bytes()?;
    match (binary, bytes.split_first()) {
        (false, _) => Ok(bytes),
        (true, Some((&JSONB_FORMAT_VERSION, rest))) => Ok(rest),
        (true, Some((version, _))) => Err(format!(
            "unsupported jsonb wire format version {version} (expected {JSONB_FORMAT_VERSION})"
        )
        .into()),
        (true, None) => Err("empty jsonb value".into()),
    }
}

/// A `jsonb` column's value, taken as the server printed it.
pub(crate) struct JsonbColumn(pub(crate) EventData);

impl Type<Postgres> for JsonbColumn {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(JSONB_OID)
    }
}

impl<'r> Decode<'r, Postgres> for JsonbColumn {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        // The server only ever prints valid JSON for a jsonb value, so the
        // text is kept without a parse; UTF-8 is still checked.
        let text = std::str::from_utf8(jsonb_text(&value)?)?;
        Ok(Self(EventData::from_json_unchecked(text)))
    }
}

/// Custom metadata, a JSON object.
pub(crate) type CustomMap = serde_json::Map<String, serde_json::Value>;

/// `custom` as the JSON text the `metadata` column takes: most events have
/// no custom entries, and those bind `{}` without serializing.
pub(crate) fn custom_text(custom: &CustomMap) -> Result<Cow<'static, str>, serde_json::Error> {
    if custom.is_empty() {
        return Ok(Cow::Borrowed("{}"));
    }
    serde_json::to_string(custom).map(Cow::Owned)
}

/// The `metadata` column: custom metadata, which must be a JSON object.
pub(crate) struct CustomColumn(pub(crate) CustomMap);

impl Type<Postgres> for CustomColumn {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(JSONB_OID)
    }
}

impl<'r> Decode<'r, Postgres> for CustomColumn {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        match jsonb_text(&value)? {
            b"{}" => Ok(Self(CustomMap::new())),
            text => Ok(Self(serde_json::from_slice(text)?)),
        }
    }
}

/// A `timestamptz` column. sqlx decodes one by adding a `Duration` to its
/// epoch through chrono's calendar arithmetic; every read event carries one,
/// and that was ~4 % of the client in `$all` reads. The binary value is
/// microseconds since 2000-01-01 UTC, so one offset and chrono's direct
/// conversion from Unix microseconds do the same.
pub(crate) struct TimestampColumn(pub(crate) DateTime<Utc>);

/// 2000-01-01T00:00:00Z (PostgreSQL's epoch) in Unix microseconds.
const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

impl Type<Postgres> for TimestampColumn {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
}

impl<'r> Decode<'r, Postgres> for TimestampColumn {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        if value.format() != PgValueFormat::Binary {
            return <DateTime<Utc> as Decode<Postgres>>::decode(value).map(Self);
        }
        let bytes: [u8; 8] = value
            .as_bytes()?
            .try_into()
            .map_err(|_| "a binary timestamptz is 8 bytes")?;
        from_postgres_micros(i64::from_be_bytes(bytes))
            .map(Self)
            .ok_or_else(|| "timestamptz out of range (infinity?)".into())
    }
}

fn from_postgres_micros(micros: i64) -> Option<DateTime<Utc>> {
    micros
        .checked_add(POSTGRES_EPOCH_UNIX_MICROS)
        .and_then(DateTime::from_timestamp_micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_decode_as_sqlx_decodes_them() {
        // sqlx's own decode: the epoch plus a chrono Duration.
        let epoch = chrono::NaiveDate::from_ymd_opt(2000, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc();
        let now = (chrono::Utc::now() - epoch).num_microseconds().unwrap();
        for micros in [
            0,
            1,
            -1,
            now,
            now + 999_999,
            -POSTGRES_EPOCH_UNIX_MICROS,
            -POSTGRES_EPOCH_UNIX_MICROS - 86_400_000_001,
            // 9999-12-31T23:59:59.999999Z
            253_402_300_799_999_999 - POSTGRES_EPOCH_UNIX_MICROS,
        ] {
            let expected = epoch + chrono::Duration::microseconds(micros);
            assert_eq!(from_postgres_micros(micros), Some(expected), "{micros}");
        }
        // PostgreSQL's 'infinity' and '-infinity'.
        assert_eq!(from_postgres_micros(i64::MAX), None);
        assert_eq!(from_postgres_micros(i64::MIN), None);
    }

    #[test]
    fn a_param_is_the_version_byte_then_the_text() {
        let data = EventData::from_json(r#"{"a": [1, 2]}"#).unwrap();
        let mut buf = PgArgumentBuffer::default();
        let written = JsonbParam(data.get()).encode_by_ref(&mut buf).unwrap();
        assert!(matches!(written, IsNull::No));
        assert_eq!(buf[0], JSONB_FORMAT_VERSION);
        assert_eq!(&buf[1..], br#"{"a": [1, 2]}"#);
    }
}
