//! The names serde gives an enum's variants (its tags) and a struct, read
//! from the `#[serde(...)]` attributes the way serde's own derive reads them.

use syn::{Attribute, LitStr, Token, meta::ParseNestedMeta};

/// What the type's `#[serde(...)]` attributes say about naming.
#[derive(Default)]
pub(crate) struct Container {
    /// `rename_all`, when serialization and deserialization agree.
    pub(crate) rename_all: Option<(RenameRule, LitStr)>,
    /// `rename` of the type itself.
    pub(crate) rename: Option<LitStr>,
}

/// `rename` of one variant.
#[derive(Default)]
pub(crate) struct Variant {
    pub(crate) rename: Option<LitStr>,
}

/// serde's `rename_all` rules.
#[derive(Clone, Copy)]
pub(crate) enum RenameRule {
    Lower,
    Upper,
    Pascal,
    Camel,
    Snake,
    ScreamingSnake,
    Kebab,
    ScreamingKebab,
}

impl RenameRule {
    fn parse(lit: &LitStr) -> syn::Result<Self> {
        Ok(match lit.value().as_str() {
            "lowercase" => Self::Lower,
            "UPPERCASE" => Self::Upper,
            "PascalCase" => Self::Pascal,
            "camelCase" => Self::Camel,
            "snake_case" => Self::Snake,
            "SCREAMING_SNAKE_CASE" => Self::ScreamingSnake,
            "kebab-case" => Self::Kebab,
            "SCREAMING-KEBAB-CASE" => Self::ScreamingKebab,
            other => {
                return Err(syn::Error::new(
                    lit.span(),
                    format!("unknown serde rename_all rule {other:?}"),
                ));
            }
        })
    }

    /// The tag serde gives a variant named `variant` (a PascalCase Rust
    /// identifier), as serde's own derive computes it.
    pub(crate) fn apply_to_variant(self, variant: &str) -> String {
        let snake = || {
            let mut out = String::new();
            for (i, ch) in variant.char_indices() {
                if i > 0 && ch.is_uppercase() {
                    out.push('_');
                }
                out.push(ch.to_ascii_lowercase());
            }
            out
        };
        match self {
            Self::Pascal => variant.to_owned(),
            Self::Lower => variant.to_ascii_lowercase(),
            Self::Upper => variant.to_ascii_uppercase(),
            Self::Camel => {
                let mut chars = variant.chars();
                match chars.next() {
                    Some(first) => first.to_ascii_lowercase().to_string() + chars.as_str(),
                    None => String::new(),
                }
            }
            Self::Snake => snake(),
            Self::ScreamingSnake => snake().to_ascii_uppercase(),
            Self::Kebab => snake().replace('_', "-"),
            Self::ScreamingKebab => snake().to_ascii_uppercase().replace('_', "-"),
        }
    }
}

/// A `rename` or `rename_all` value: `= "x"`, or `(serialize = "x",
/// deserialize = "y")` whose two names must agree (an event is written
/// under one name and must be read back under the same one).
fn name_value(meta: &ParseNestedMeta<'_>, what: &str) -> syn::Result<LitStr> {
    if meta.input.peek(Token![=]) {
        return meta.value()?.parse();
    }
    let mut serialize: Option<LitStr> = None;
    let mut deserialize: Option<LitStr> = None;
    meta.parse_nested_meta(|inner| {
        if inner.path.is_ident("serialize") {
            serialize = Some(inner.value()?.parse()?);
        } else if inner.path.is_ident("deserialize") {
            deserialize = Some(inner.value()?.parse()?);
        } else {
            skip(&inner)?;
        }
        Ok(())
    })?;
    match (serialize, deserialize) {
        (Some(s), Some(d)) if s.value() != d.value() => Err(syn::Error::new(
            d.span(),
            format!(
                "#[derive(Event)] needs one name per event: serde {what} serializes as {:?} \
                 but deserializes as {:?}",
                s.value(),
                d.value()
            ),
        )),
        (Some(s), _) => Ok(s),
        (None, Some(d)) => Err(syn::Error::new(
            d.span(),
            format!(
                "#[derive(Event)] needs one name per event: serde {what} renames only \
                 deserialization; rename both"
            ),
        )),
        (None, None) => Err(meta.error(format!("empty serde {what}"))),
    }
}

/// Consumes a serde option this crate does not care about.
fn skip(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<syn::Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.parse_nested_meta(|inner| skip(&inner))?;
    }
    Ok(())
}

/// The refusal of an untagged representation: decoding could not tell
/// which variant a payload holds.
fn untagged(meta: &ParseNestedMeta<'_>) -> syn::Error {
    meta.error(
        "#[derive(Event)] cannot name untagged variants: serde would decode a payload as \
         the first variant whose shape fits, whatever it was recorded as; use serde's \
         default (externally tagged) or `tag = \"...\"` representation",
    )
}

/// Reads a type's `#[serde(...)]` attributes.
pub(crate) fn container(attrs: &[Attribute]) -> syn::Result<Container> {
    let mut out = Container::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("rename_all") {
                let lit = name_value(&meta, "rename_all")?;
                out.rename_all = Some((RenameRule::parse(&lit)?, lit));
            } else if meta.path.is_ident("rename") {
                out.rename = Some(name_value(&meta, "rename")?);
            } else if meta.path.is_ident("untagged") {
                return Err(untagged(&meta));
            } else {
                skip(&meta)?;
            }
            Ok(())
        })?;
    }
    Ok(out)
}

/// Reads a variant's `#[serde(...)]` attributes.
pub(crate) fn variant(attrs: &[Attribute]) -> syn::Result<Variant> {
    let mut out = Variant::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("rename") {
                out.rename = Some(name_value(&meta, "rename")?);
            } else if meta.path.is_ident("untagged") {
                return Err(untagged(&meta));
            } else {
                skip(&meta)?;
            }
            Ok(())
        })?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::RenameRule::*;

    #[test]
    fn variant_names_follow_serde() {
        let cases = [
            (Lower, "lowercase"),
            (Upper, "LOWERCASE"),
            (Pascal, "LowerCase"),
            (Camel, "lowerCase"),
            (Snake, "lower_case"),
            (ScreamingSnake, "LOWER_CASE"),
            (Kebab, "lower-case"),
            (ScreamingKebab, "LOWER-CASE"),
        ];
        for (rule, expected) in cases {
            assert_eq!(rule.apply_to_variant("LowerCase"), expected);
        }
        assert_eq!(Snake.apply_to_variant("A"), "a");
    }
}
