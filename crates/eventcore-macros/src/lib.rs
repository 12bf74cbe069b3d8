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

/// Implements `eventcore::Event` for an enum or a struct that also derives
/// serde's `Serialize` and `Deserialize`.
///
/// ```
/// use eventcore::Event;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
/// #[event(version = 2)]
/// enum AccountEvent {
///     Opened { owner: String },             // recorded as "Opened"
///     #[serde(rename = "Deposited")]
///     MoneyDeposited { cents: u64 },        // recorded as "Deposited"
///     #[event(name = "bank.AccountClosed")]
///     Closed,                               // recorded as "bank.AccountClosed"
/// }
///
/// #[derive(Debug, Serialize, Deserialize, Event)]
/// #[event(name = "metrics.Sampled")]
/// struct Sampled { value: f64 }
///
/// assert_eq!(AccountEvent::MoneyDeposited { cents: 5 }.event_type(), "Deposited");
/// assert_eq!(<AccountEvent as Event>::SCHEMA_VERSION, 2);
/// ```
///
/// **Type names.** Each variant of an enum is recorded under the tag serde
/// gives it: the variant's name, after `#[serde(rename = "...")]` or the
/// enum's `#[serde(rename_all = "...")]`. That is also the tag serde reads
/// back, so a stored event always decodes to the variant it was recorded
/// as, and the type name checked on decoding is the one recorded.
/// `#[event(name = "...")]` on a variant overrides the name (for names
/// that must stay stable while the Rust code changes). A struct is recorded
/// under its name, its `#[serde(rename)]`, or `#[event(name)]` on it.
/// serde's internally tagged form (`#[serde(tag = "type")]`) works the
/// same; untagged enums are refused, since serde decodes them by shape.
///
/// **Attributes** (`#[event(...)]`):
///
/// * `name = "..."`: on a variant, or on a struct: the recorded type name.
/// * `version = N`: on the type: `Event::SCHEMA_VERSION` (default 1).
/// * `upcasters = path`: on the type: a `fn() -> eventcore::Upcasters`,
///   built once, that decoding runs for events recorded at older versions
///   or under old names.
///
/// Names are checked at compile time (not empty, no control characters, no
/// surrounding whitespace, at most 255 bytes, no two variants alike), and so
/// are versions (1 to 2,147,483,647).
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    event::expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Implements `eventcore::CommandStreams` for a struct: the streams the
/// command reads are its fields marked `#[stream]`, in field order.
/// Implement `eventcore::Decide` for the decision, and the struct is a
/// command.
///
/// ```
/// use eventcore::{Command, CommandStreams, StreamId};
///
/// #[derive(Command)]
/// struct Transfer {
///     #[stream] from: StreamId,
///     #[stream] to: StreamId,
///     #[stream] fee_account: Option<StreamId>,
///     amount: u64,
/// }
///
/// let id = |s: &str| StreamId::new(s).unwrap();
/// let t = Transfer { from: id("a"), to: id("b"), fee_account: None, amount: 1 };
/// assert_eq!(t.streams(), [id("a"), id("b")]);
/// ```
///
/// A `#[stream]` field is a `StreamId`, any type that is `AsRef<StreamId>`
/// (your own account id type, say), or an `Option`, `Vec`, array or
/// `BTreeSet` of those (see `eventcore::StreamField`). A struct without
/// `#[stream]` fields, an enum, and `#[stream(...)]` with arguments are
/// compile errors.
#[proc_macro_derive(Command, attributes(stream))]
pub fn derive_command(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    command::expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
