//! Event payloads on the wire as `jsonb` text, without a client-side parse.
//!
//! sqlx's `Json<T>` runs serde both ways. A payload is already JSON text on
//! the way in ([`EventData`] checked it when it was built) and the server
//! parses it again into `jsonb`, which it then prints back as valid JSON on
//! the way out. Parsing it a third time in the client, only to keep the same
//! text, was ~10 % of the client's CPU when reading `$all`.

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

/// A payload to bind as a `jsonb` parameter.
#[derive(Clone, Copy)]
pub(crate) struct JsonbParam<'a>(pub(crate) &'a EventData);

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
        buf.extend_from_slice(self.0.get().as_bytes());
        Ok(IsNull::No)
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
        let binary = value.format() == PgValueFormat::Binary;
        let bytes = value.as_bytes()?;
        let text = match (binary, bytes.split_first()) {
            (false, _) => bytes,
            (true, Some((&JSONB_FORMAT_VERSION, rest))) => rest,
            (true, Some((version, _))) => {
                return Err(format!(
                    "unsupported jsonb wire format version {version} (expected {JSONB_FORMAT_VERSION})"
                )
                .into());
            }
            (true, None) => return Err("empty jsonb value".into()),
        };
        // The server only ever prints valid JSON for a jsonb value, so the
        // text is kept without a parse; UTF-8 is still checked.
        let text = std::str::from_utf8(text)?;
        Ok(Self(EventData::from_json_unchecked(text)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_param_is_the_version_byte_then_the_text() {
        let data = EventData::from_json(r#"{"a": [1, 2]}"#).unwrap();
        let mut buf = PgArgumentBuffer::default();
        let written = JsonbParam(&data).encode_by_ref(&mut buf).unwrap();
        assert!(matches!(written, IsNull::No));
        assert_eq!(buf[0], JSONB_FORMAT_VERSION);
        assert_eq!(&buf[1..], br#"{"a": [1, 2]}"#);
    }
}
