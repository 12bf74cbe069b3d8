//! Derive macros for [EventCore](https://docs.rs/eventcore). Use them
//! through `eventcore` (its default `derive` feature re-exports them), not
//! from this crate directly: the generated code names `::eventcore`.
//!
//! * `#[derive(Event)]` implements `eventcore::Event` for an enum (one type
//!   name per variant) or a struct (one type name), named the way serde tags
//!   it, so the name recorded with an event is the one decoding checks.
//! * `#[derive(Command)]` implements `eventcore::CommandStreams` from the
//!   fields marked `#[stream]`: the streams a command reads.
//!
//! The attributes and their rules are documented on the re-exports,
//! `eventcore::Event` and `eventcore::Command`.

mod command;
mod event;
mod serde_names;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Implements `eventcore::Event`. See the re-export `eventcore::Event`.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    event::expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Implements `eventcore::CommandStreams` from the `#[stream]` fields. See
/// the re-export `eventcore::Command`.
#[proc_macro_derive(Command, attributes(stream))]
pub fn derive_command(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    command::expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
