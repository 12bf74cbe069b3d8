//! The bank's domain: account ids, events, the balance fold and the commands.
//!
//! Everything here is pure: no I/O, no store. Commands are tested with
//! [`eventcore::testing::given`] at the bottom of this file, and the same
//! [`AccountState`] fold serves the commands, the final audit and (later)
//! projections.
//!
//! Amounts are whole dollars (`u64`), which keeps the example's output
//! readable; balances are `i128` so the fold can never overflow and a negative
//! balance, should one ever appear, is visible rather than wrapped around.

use std::fmt;

use eventcore::{Command, Decision, Event, RecordedEvent, StreamId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Prefix of every account stream: account `alice` lives in `account-alice`.
pub(crate) const STREAM_PREFIX: &str = "account-";

/// A validated account name and the stream that holds the account.
///
/// Serialized as the bare name (`"bob"`), so events stay readable in the
/// database.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub(crate) struct AccountId {
    name: String,
    stream: StreamId,
}

/// Why a string is not a usable account name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid account name {name:?}: {reason}")]
pub(crate) struct InvalidAccountName {
    name: String,
    reason: String,
}

impl AccountId {
    /// Validates `name`: non-empty, no whitespace, and `account-<name>` must
    /// be a valid [`StreamId`].
    pub(crate) fn new(name: impl Into<String>) -> Result<Self, InvalidAccountName> {
        let name = name.into();
        let invalid = |reason: String| InvalidAccountName {
            name: name.clone(),
            reason,
        };
        if name.is_empty() {
            return Err(invalid("it is empty".into()));
        }
        if name.chars().any(char::is_whitespace) {
            return Err(invalid("it contains whitespace".into()));
        }
        let stream =
            StreamId::new(format!("{STREAM_PREFIX}{name}")).map_err(|e| invalid(e.to_string()))?;
        Ok(Self { name, stream })
    }

    /// The account's name, `alice`.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The account's stream, `account-alice`.
    pub(crate) fn stream(&self) -> &StreamId {
        &self.stream
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountId({:?})", self.name)
    }
}

impl TryFrom<String> for AccountId {
    type Error = InvalidAccountName;
    fn try_from(name: String) -> Result<Self, Self::Error> {
        Self::new(name)
    }
}

impl From<AccountId> for String {
    fn from(id: AccountId) -> Self {
        id.name
    }
}

/// Formats a whole-dollar amount or balance: `$1,250`, `-$3`.
pub(crate) fn money(amount: impl Into<i128>) -> String {
    let amount: i128 = amount.into();
    let digits = amount.unsigned_abs().to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let sign = if amount < 0 { "-" } else { "" };
    format!("{sign}${grouped}")
}

/// Everything that can happen to one account. Each variant has a stable
/// `event_type` name, independent of the Rust identifiers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AccountEvent {
    /// The account was opened, possibly with money brought in.
    Opened {
        /// Who owns it.
        owner: String,
        /// Dollars brought in at opening (0 for none).
        #[serde(default)]
        initial_deposit: u64,
    },
    /// Money arrived from outside the bank.
    Deposited {
        /// Dollars.
        amount: u64,
    },
    /// Money left the bank.
    Withdrawn {
        /// Dollars.
        amount: u64,
    },
    /// Money left for another account of the bank.
    TransferredOut {
        /// Dollars.
        amount: u64,
        /// The receiving account.
        to: AccountId,
        /// Shared by both halves of the transfer.
        transfer_id: Uuid,
    },
    /// Money arrived from another account of the bank.
    TransferredIn {
        /// Dollars.
        amount: u64,
        /// The paying account.
        from: AccountId,
        /// Shared by both halves of the transfer.
        transfer_id: Uuid,
    },
}

impl Event for AccountEvent {
    fn event_type(&self) -> &'static str {
        match self {
            AccountEvent::Opened { .. } => "bank.AccountOpened",
            AccountEvent::Deposited { .. } => "bank.MoneyDeposited",
            AccountEvent::Withdrawn { .. } => "bank.MoneyWithdrawn",
            AccountEvent::TransferredOut { .. } => "bank.TransferredOut",
            AccountEvent::TransferredIn { .. } => "bank.TransferredIn",
        }
    }
}

impl AccountEvent {
    /// How this event changes its own account's balance.
    pub(crate) fn delta(&self) -> i128 {
        match self {
            AccountEvent::Opened {
                initial_deposit, ..
            } => i128::from(*initial_deposit),
            AccountEvent::Deposited { amount } | AccountEvent::TransferredIn { amount, .. } => {
                i128::from(*amount)
            }
            AccountEvent::Withdrawn { amount } | AccountEvent::TransferredOut { amount, .. } => {
                -i128::from(*amount)
            }
        }
    }

    /// How this event changes the bank's total: money brought in or taken
    /// out. Transfers only move money around, so they count zero.
    pub(crate) fn external_delta(&self) -> i128 {
        match self {
            AccountEvent::TransferredOut { .. } | AccountEvent::TransferredIn { .. } => 0,
            other => other.delta(),
        }
    }
}

/// One account folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AccountState {
    /// The owner, once the account is opened.
    pub(crate) owner: Option<String>,
    /// Current balance in dollars.
    pub(crate) balance: i128,
    /// Events folded so far (the stream's version).
    pub(crate) events: u64,
}

impl AccountState {
    /// Whether the account has been opened.
    pub(crate) fn is_open(&self) -> bool {
        self.owner.is_some()
    }

    /// Folds one event in.
    pub(crate) fn apply(&mut self, event: &AccountEvent) {
        if let AccountEvent::Opened { owner, .. } = event {
            self.owner = Some(owner.clone());
        }
        self.balance += event.delta();
        self.events += 1;
    }

    /// `Ok` if the account is open, else the `NotOpen` refusal for it.
    fn require_open(&self, account: &AccountId) -> Result<(), BankError> {
        if self.is_open() {
            Ok(())
        } else {
            Err(BankError::NotOpen {
                account: account.clone(),
            })
        }
    }

    /// Whether `amount` can leave the account without overdrawing it.
    fn covers(&self, amount: u64) -> bool {
        self.balance >= i128::from(amount)
    }
}

/// Why the bank refused a command: the business errors, typed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BankError {
    /// Opening an account that already exists.
    #[error("account '{account}' is already open")]
    AlreadyOpen {
        /// The existing account.
        account: AccountId,
    },
    /// Using an account that was never opened.
    #[error("account '{account}' does not exist")]
    NotOpen {
        /// The missing account.
        account: AccountId,
    },
    /// The overdraft rule: balances never go below zero.
    #[error(
        "insufficient funds: '{account}' has {}, needs {}",
        money(*balance),
        money(*requested)
    )]
    InsufficientFunds {
        /// The paying account.
        account: AccountId,
        /// Its balance when the command decided.
        balance: i128,
        /// The amount asked for.
        requested: u64,
    },
    /// A transfer whose two sides are the same account.
    #[error("cannot transfer from '{account}' to itself")]
    SameAccount {
        /// The account named twice.
        account: AccountId,
    },
    /// Deposits, withdrawals and transfers must move at least one dollar.
    #[error("the amount must be at least $1")]
    ZeroAmount,
}

/// Opens an account. The executor reads the (empty) stream at version 0, so
/// the append expects `NoStream`: of two concurrent openings exactly one
/// succeeds, and the retry of the other is rejected with
/// [`BankError::AlreadyOpen`].
#[derive(Debug, Clone)]
pub(crate) struct OpenAccount {
    /// The new account.
    pub(crate) account: AccountId,
    /// Its owner.
    pub(crate) owner: String,
    /// Dollars brought in at opening.
    pub(crate) initial_deposit: u64,
}

impl Command for OpenAccount {
    type Event = AccountEvent;
    type State = AccountState;
    type Error = BankError;

    fn read_streams(&self) -> Vec<StreamId> {
        vec![self.account.stream().clone()]
    }

    fn apply(&self, state: &mut AccountState, event: &RecordedEvent<AccountEvent>) {
        state.apply(&event.event);
    }

    fn handle(
        &self,
        state: &AccountState,
        d: &mut Decision<AccountEvent>,
    ) -> Result<(), BankError> {
        // Any event at all means the stream exists: never open it twice.
        if state.is_open() || state.events > 0 {
            return Err(BankError::AlreadyOpen {
                account: self.account.clone(),
            });
        }
        d.emit(
            self.account.stream(),
            AccountEvent::Opened {
                owner: self.owner.clone(),
                initial_deposit: self.initial_deposit,
            },
        );
        Ok(())
    }
}

/// Puts money into an open account.
#[derive(Debug, Clone)]
pub(crate) struct Deposit {
    /// The receiving account.
    pub(crate) account: AccountId,
    /// Dollars.
    pub(crate) amount: u64,
}

impl Command for Deposit {
    type Event = AccountEvent;
    type State = AccountState;
    type Error = BankError;

    fn read_streams(&self) -> Vec<StreamId> {
        vec![self.account.stream().clone()]
    }

    fn apply(&self, state: &mut AccountState, event: &RecordedEvent<AccountEvent>) {
        state.apply(&event.event);
    }

    fn handle(
        &self,
        state: &AccountState,
        d: &mut Decision<AccountEvent>,
    ) -> Result<(), BankError> {
        if self.amount == 0 {
            return Err(BankError::ZeroAmount);
        }
        state.require_open(&self.account)?;
        d.emit(
            self.account.stream(),
            AccountEvent::Deposited {
                amount: self.amount,
            },
        );
        Ok(())
    }
}

/// Takes money out of an open account, never below zero.
#[derive(Debug, Clone)]
pub(crate) struct Withdraw {
    /// The paying account.
    pub(crate) account: AccountId,
    /// Dollars.
    pub(crate) amount: u64,
}

impl Command for Withdraw {
    type Event = AccountEvent;
    type State = AccountState;
    type Error = BankError;

    fn read_streams(&self) -> Vec<StreamId> {
        vec![self.account.stream().clone()]
    }

    fn apply(&self, state: &mut AccountState, event: &RecordedEvent<AccountEvent>) {
        state.apply(&event.event);
    }

    fn handle(
        &self,
        state: &AccountState,
        d: &mut Decision<AccountEvent>,
    ) -> Result<(), BankError> {
        if self.amount == 0 {
            return Err(BankError::ZeroAmount);
        }
        state.require_open(&self.account)?;
        if !state.covers(self.amount) {
            return Err(BankError::InsufficientFunds {
                account: self.account.clone(),
                balance: state.balance,
                requested: self.amount,
            });
        }
        d.emit(
            self.account.stream(),
            AccountEvent::Withdrawn {
                amount: self.amount,
            },
        );
        Ok(())
    }
}

/// Moves money between two open accounts: reads both streams and appends to
/// both in one atomic append, so the money is never in both accounts or in
/// neither, and a concurrent change to either account makes the executor
/// re-read and decide again.
#[derive(Debug, Clone)]
pub(crate) struct Transfer {
    /// The paying account.
    pub(crate) from: AccountId,
    /// The receiving account.
    pub(crate) to: AccountId,
    /// Dollars.
    pub(crate) amount: u64,
    /// Links the two halves; fixed when the command is created, so retries
    /// keep it.
    pub(crate) transfer_id: Uuid,
}

impl Transfer {
    /// A transfer with a fresh id.
    pub(crate) fn new(from: AccountId, to: AccountId, amount: u64) -> Self {
        Self {
            from,
            to,
            amount,
            transfer_id: Uuid::now_v7(),
        }
    }
}

/// Both accounts of a transfer, folded.
#[derive(Debug, Default)]
pub(crate) struct TransferState {
    from: AccountState,
    to: AccountState,
}

impl Command for Transfer {
    type Event = AccountEvent;
    type State = TransferState;
    type Error = BankError;

    fn read_streams(&self) -> Vec<StreamId> {
        vec![self.from.stream().clone(), self.to.stream().clone()]
    }

    fn apply(&self, state: &mut TransferState, event: &RecordedEvent<AccountEvent>) {
        if event.stream_id == *self.from.stream() {
            state.from.apply(&event.event);
        } else if event.stream_id == *self.to.stream() {
            state.to.apply(&event.event);
        }
    }

    fn handle(
        &self,
        state: &TransferState,
        d: &mut Decision<AccountEvent>,
    ) -> Result<(), BankError> {
        if self.from == self.to {
            return Err(BankError::SameAccount {
                account: self.from.clone(),
            });
        }
        if self.amount == 0 {
            return Err(BankError::ZeroAmount);
        }
        state.from.require_open(&self.from)?;
        state.to.require_open(&self.to)?;
        if !state.from.covers(self.amount) {
            return Err(BankError::InsufficientFunds {
                account: self.from.clone(),
                balance: state.from.balance,
                requested: self.amount,
            });
        }
        d.emit(
            self.from.stream(),
            AccountEvent::TransferredOut {
                amount: self.amount,
                to: self.to.clone(),
                transfer_id: self.transfer_id,
            },
        );
        d.emit(
            self.to.stream(),
            AccountEvent::TransferredIn {
                amount: self.amount,
                from: self.from.clone(),
                transfer_id: self.transfer_id,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use eventcore::testing::given;

    use super::*;

    fn id(name: &str) -> AccountId {
        AccountId::new(name).unwrap()
    }

    fn opened(name: &str, initial_deposit: u64) -> (StreamId, AccountEvent) {
        (
            id(name).stream().clone(),
            AccountEvent::Opened {
                owner: name.to_uppercase(),
                initial_deposit,
            },
        )
    }

    fn transfer(from: &str, to: &str, amount: u64) -> Transfer {
        Transfer {
            from: id(from),
            to: id(to),
            amount,
            transfer_id: Uuid::from_u128(42),
        }
    }

    #[test]
    fn opening_a_new_account_records_the_owner_and_deposit() {
        given::<AccountEvent, _>([])
            .when(OpenAccount {
                account: id("alice"),
                owner: "ALICE".into(),
                initial_deposit: 100,
            })
            .then([opened("alice", 100)]);
    }

    #[test]
    fn reopening_an_account_is_rejected() {
        given([opened("alice", 100)])
            .when(OpenAccount {
                account: id("alice"),
                owner: "Mallory".into(),
                initial_deposit: 1_000,
            })
            .then_rejected(|e| {
                *e == BankError::AlreadyOpen {
                    account: id("alice"),
                }
            });
    }

    #[test]
    fn deposits_need_an_open_account_and_a_positive_amount() {
        given([opened("alice", 0)])
            .when(Deposit {
                account: id("alice"),
                amount: 25,
            })
            .then([(
                id("alice").stream().clone(),
                AccountEvent::Deposited { amount: 25 },
            )]);
        given::<AccountEvent, _>([])
            .when(Deposit {
                account: id("ghost"),
                amount: 25,
            })
            .then_rejected(|e| matches!(e, BankError::NotOpen { .. }));
        given([opened("alice", 0)])
            .when(Deposit {
                account: id("alice"),
                amount: 0,
            })
            .then_rejected(|e| *e == BankError::ZeroAmount);
    }

    #[test]
    fn withdrawing_more_than_the_balance_is_rejected() {
        given([opened("bob", 50)])
            .when(Withdraw {
                account: id("bob"),
                amount: 51,
            })
            .then_rejected(|e| {
                *e == BankError::InsufficientFunds {
                    account: id("bob"),
                    balance: 50,
                    requested: 51,
                }
            });
    }

    #[test]
    fn a_transfer_appends_to_both_accounts() {
        given([opened("alice", 100), opened("bob", 50)])
            .when(transfer("alice", "bob", 30))
            .then([
                (
                    id("alice").stream().clone(),
                    AccountEvent::TransferredOut {
                        amount: 30,
                        to: id("bob"),
                        transfer_id: Uuid::from_u128(42),
                    },
                ),
                (
                    id("bob").stream().clone(),
                    AccountEvent::TransferredIn {
                        amount: 30,
                        from: id("alice"),
                        transfer_id: Uuid::from_u128(42),
                    },
                ),
            ]);
    }

    #[test]
    fn a_transfer_may_empty_the_account_but_not_overdraw_it() {
        let history = || {
            [
                opened("alice", 100),
                opened("bob", 50),
                (
                    id("alice").stream().clone(),
                    AccountEvent::Withdrawn { amount: 40 },
                ),
            ]
        };
        given(history())
            .when(transfer("alice", "bob", 61))
            .then_rejected(|e| {
                *e == BankError::InsufficientFunds {
                    account: id("alice"),
                    balance: 60,
                    requested: 61,
                }
            });
        let outcome = given(history()).when(transfer("alice", "bob", 60));
        assert_eq!(outcome.appended().len(), 2);
    }

    #[test]
    fn transfers_to_self_or_between_unopened_accounts_are_rejected() {
        given([opened("alice", 100)])
            .when(transfer("alice", "alice", 10))
            .then_rejected(|e| {
                *e == BankError::SameAccount {
                    account: id("alice"),
                }
            });
        given([opened("alice", 100)])
            .when(transfer("alice", "zoe", 10))
            .then_rejected(|e| *e == BankError::NotOpen { account: id("zoe") });
        given([opened("bob", 100)])
            .when(transfer("zoe", "bob", 10))
            .then_rejected(|e| *e == BankError::NotOpen { account: id("zoe") });
        given([opened("alice", 100), opened("bob", 0)])
            .when(transfer("alice", "bob", 0))
            .then_rejected(|e| *e == BankError::ZeroAmount);
    }

    #[test]
    fn the_fold_tracks_balance_owner_and_version() {
        let mut state = AccountState::default();
        for event in [
            AccountEvent::Opened {
                owner: "Alice".into(),
                initial_deposit: 100,
            },
            AccountEvent::Deposited { amount: 5 },
            AccountEvent::TransferredOut {
                amount: 30,
                to: id("bob"),
                transfer_id: Uuid::nil(),
            },
            AccountEvent::TransferredIn {
                amount: 10,
                from: id("bob"),
                transfer_id: Uuid::nil(),
            },
            AccountEvent::Withdrawn { amount: 15 },
        ] {
            state.apply(&event);
        }
        assert_eq!(state.owner.as_deref(), Some("Alice"));
        assert_eq!(state.balance, 70);
        assert_eq!(state.events, 5);
    }

    #[test]
    fn events_serialize_readably_with_stable_type_names() {
        let event = AccountEvent::TransferredOut {
            amount: 30,
            to: id("bob"),
            transfer_id: Uuid::nil(),
        };
        assert_eq!(event.event_type(), "bank.TransferredOut");
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["transferred_out"]["to"], "bob");
        let back: AccountEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
        // An old `Opened` without the optional deposit still decodes.
        let old = serde_json::json!({ "opened": { "owner": "Carol" } });
        assert_eq!(
            serde_json::from_value::<AccountEvent>(old).unwrap(),
            AccountEvent::Opened {
                owner: "Carol".into(),
                initial_deposit: 0
            }
        );
    }

    #[test]
    fn account_names_are_validated() {
        assert_eq!(id("alice").stream().as_str(), "account-alice");
        assert!(AccountId::new("").is_err());
        assert!(AccountId::new("two words").is_err());
        assert!(serde_json::from_value::<AccountId>(serde_json::json!("")).is_err());
        assert_eq!(money(1_234_567u64), "$1,234,567");
        assert_eq!(money(-3i64), "-$3");
        assert_eq!(money(0u64), "$0");
    }
}
