//! `#[derive(Event)]`.

use std::collections::HashMap;

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::{Attribute, Data, DeriveInput, LitInt, LitStr, Path, spanned::Spanned};

use crate::serde_names;

/// The longest type name a store accepts (`eventcore::MAX_EVENT_TYPE_LEN`).
const MAX_EVENT_TYPE_LEN: usize = 255;
/// The largest schema version (`eventcore::MAX_SCHEMA_VERSION`).
const MAX_SCHEMA_VERSION: u64 = i32::MAX as u64;

/// `#[event(...)]` on the type or on a variant.
#[derive(Default)]
struct EventAttrs {
    name: Option<LitStr>,
    version: Option<LitInt>,
    upcasters: Option<Path>,
}

fn event_attrs(attrs: &[Attribute]) -> syn::Result<EventAttrs> {
    let mut out = EventAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("event")) {
        attr.parse_nested_meta(|meta| {
            let duplicate = || meta.error("given twice");
            if meta.path.is_ident("name") {
                if out.name.is_some() {
                    return Err(duplicate());
                }
                out.name = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("version") {
                if out.version.is_some() {
                    return Err(duplicate());
                }
                out.version = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("upcasters") {
                if out.upcasters.is_some() {
                    return Err(duplicate());
                }
                out.upcasters = Some(meta.value()?.parse()?);
            } else {
                return Err(meta.error(
                    "unknown event attribute; expected `name = \"...\"`, `version = N` \
                     or `upcasters = path::to::fn`",
                ));
            }
            Ok(())
        })?;
    }
    Ok(out)
}

/// The checks a store applies to type names that can be made here.
fn check_name(name: &str, span: Span) -> syn::Result<()> {
    let problem = if name.is_empty() {
        Some("is empty".to_owned())
    } else if name.len() > MAX_EVENT_TYPE_LEN {
        Some(format!(
            "is {} bytes long; the limit is {MAX_EVENT_TYPE_LEN}",
            name.len()
        ))
    } else if name.starts_with(char::is_whitespace) || name.ends_with(char::is_whitespace) {
        Some("starts or ends with whitespace".to_owned())
    } else {
        name.chars()
            .find(|c| c.is_control())
            .map(|c| format!("contains the control character {c:?}"))
    };
    match problem {
        Some(problem) => Err(syn::Error::new(
            span,
            format!("event type name {name:?} {problem}"),
        )),
        None => Ok(()),
    }
}

fn version(lit: &LitInt) -> syn::Result<u32> {
    let n: u64 = lit.base10_parse()?;
    if n == 0 || n > MAX_SCHEMA_VERSION {
        return Err(syn::Error::new(
            lit.span(),
            format!("schema versions start at 1 and end at {MAX_SCHEMA_VERSION}"),
        ));
    }
    Ok(n as u32)
}

pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let ident = &input.ident;
    let attrs = event_attrs(&input.attrs)?;
    let serde = serde_names::container(&input.attrs)?;
    let event_type = match &input.data {
        Data::Enum(data) => {
            if let Some(name) = &attrs.name {
                return Err(syn::Error::new(
                    name.span(),
                    "on an enum, `name` goes on each variant: #[event(name = \"...\")]",
                ));
            }
            if data.variants.is_empty() {
                return Err(syn::Error::new(
                    ident.span(),
                    "an event enum needs at least one variant",
                ));
            }
            let mut seen: HashMap<String, &syn::Ident> = HashMap::new();
            let mut arms = Vec::new();
            for v in &data.variants {
                let own = event_attrs(&v.attrs)?;
                if let Some(lit) = own.version.as_ref() {
                    return Err(syn::Error::new(
                        lit.span(),
                        "`version` applies to the whole type: put #[event(version = N)] on the enum",
                    ));
                }
                if let Some(path) = own.upcasters.as_ref() {
                    return Err(syn::Error::new(
                        path.span(),
                        "`upcasters` applies to the whole type: put it on the enum",
                    ));
                }
                let tag = serde_names::variant(&v.attrs)?;
                let (name, span) = match (own.name, tag.rename, &serde.rename_all) {
                    (Some(lit), _, _) | (None, Some(lit), _) => (lit.value(), lit.span()),
                    (None, None, Some((rule, _))) => {
                        (rule.apply_to_variant(&v.ident.to_string()), v.ident.span())
                    }
                    (None, None, None) => (v.ident.to_string(), v.ident.span()),
                };
                check_name(&name, span)?;
                if let Some(first) = seen.insert(name.clone(), &v.ident) {
                    return Err(syn::Error::new(
                        span,
                        format!(
                            "variants `{first}` and `{}` would both be recorded as {name:?}: \
                             decoding could not tell them apart",
                            v.ident
                        ),
                    ));
                }
                let variant = &v.ident;
                arms.push(quote!(Self::#variant { .. } => #name,));
            }
            quote!(match self { #(#arms)* })
        }
        Data::Struct(_) => {
            let (name, span) = match (&attrs.name, &serde.rename) {
                (Some(lit), _) | (None, Some(lit)) => (lit.value(), lit.span()),
                (None, None) => (ident.to_string(), ident.span()),
            };
            check_name(&name, span)?;
            quote!(#name)
        }
        Data::Union(u) => {
            return Err(syn::Error::new(
                u.union_token.span,
                "#[derive(Event)] works on enums and structs, not unions",
            ));
        }
    };
    let version = match &attrs.version {
        Some(lit) => {
            let v = version(lit)?;
            quote!(const SCHEMA_VERSION: u32 = #v;)
        }
        None => quote!(),
    };
    let decode = match &attrs.upcasters {
        Some(path) => quote! {
            fn decode(
                event_type: &str,
                schema_version: u32,
                data: &::eventcore::EventData,
            ) -> ::core::result::Result<Self, ::eventcore::DecodeError> {
                static UPCASTERS: ::std::sync::OnceLock<::eventcore::Upcasters> =
                    ::std::sync::OnceLock::new();
                let build: fn() -> ::eventcore::Upcasters = #path;
                UPCASTERS
                    .get_or_init(build)
                    .decode::<Self>(event_type, schema_version, data)
            }
        },
        None => quote!(),
    };
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics ::eventcore::Event for #ident #ty_generics #where_clause {
            #version
            fn event_type(&self) -> &'static str {
                #event_type
            }
            #decode
        }
    })
}
