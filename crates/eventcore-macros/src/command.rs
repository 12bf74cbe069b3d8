//! `#[derive(Command)]`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::{Data, DeriveInput, Fields, Index, Meta, spanned::Spanned};

const NEEDS_STREAMS: &str = "#[derive(Command)] needs at least one field marked #[stream]: \
                             the streams the command reads (and may write to)";

pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let ident = &input.ident;
    let fields = match &input.data {
        Data::Struct(data) => &data.fields,
        Data::Enum(e) => {
            return Err(syn::Error::new(
                e.enum_token.span,
                "#[derive(Command)] works on structs: a command is a struct whose #[stream] \
                 fields name the streams it reads",
            ));
        }
        Data::Union(u) => {
            return Err(syn::Error::new(
                u.union_token.span,
                "#[derive(Command)] works on structs, not unions",
            ));
        }
    };
    let mut collect = Vec::new();
    let members: Vec<_> = match fields {
        Fields::Named(named) => named
            .named
            .iter()
            .map(|f| {
                let name = f.ident.as_ref().expect("named field");
                (f, quote!(#name))
            })
            .collect(),
        Fields::Unnamed(unnamed) => unnamed
            .unnamed
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let index = Index::from(i);
                (f, quote!(#index))
            })
            .collect(),
        Fields::Unit => Vec::new(),
    };
    for (field, member) in members {
        let Some(attr) = field.attrs.iter().find(|a| a.path().is_ident("stream")) else {
            continue;
        };
        if !matches!(attr.meta, Meta::Path(_)) {
            return Err(syn::Error::new(
                attr.meta.span(),
                "#[stream] takes no arguments: the field's value names the stream(s)",
            ));
        }
        if field
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("stream"))
            .count()
            > 1
        {
            return Err(syn::Error::new(attr.span(), "#[stream] given twice"));
        }
        // Spanned at the field's type, so a type that names no stream is
        // reported there.
        let ty = &field.ty;
        collect.push(quote_spanned! {ty.span()=>
            ::eventcore::StreamField::collect_streams(&self.#member, &mut streams);
        });
    }
    if collect.is_empty() {
        return Err(syn::Error::new(ident.span(), NEEDS_STREAMS));
    }
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics ::eventcore::CommandStreams for #ident #ty_generics #where_clause {
            fn streams(&self) -> ::std::vec::Vec<::eventcore::StreamId> {
                let mut streams = ::std::vec::Vec::new();
                #(#collect)*
                streams
            }
        }
    })
}
