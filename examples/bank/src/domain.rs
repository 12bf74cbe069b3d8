//! The bank's domain: account ids, events, the account state and the
//! commands.
//!
//! Everything here is pure: no I/O, no store. One [`Account`] state, folded
//! from an account's stream, serves every command (and the audit); each
//! command declares its streams with `#[derive(Command)]` and decides with
//! [`Decide`]. Commands are tested with [`eventcore::testing::given`] at the
//! bottom of this file.
//!
//! Amounts are whole dollars (`u64`), which keeps the example's output
//! readable; balances are `i128` so the fold can never overflow and a negative
//! balance, should one ever appear, is visible rather than wrapped around.

use std::fmt;

use eventcore::{Command, Decide, Decision, Event, Snapshots, State, States, StreamId};
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
        let invalid = |reason: &str| InvalidAccountName {
            name: name.clone(),
            reason: reason.to_owned(),
        };
        if name.is_empty() {
            return Err(invalid("it is empty"));
        }
        if name.chars().any(char::is_whitespace) {
            return Err(invalid("it contains whitespace"));
        }
        let stream =
            StreamId::new(format!("{STREAM_PREFIX}{name}")).map_err(|e| invalid(&e.to_string()))?;
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

/// An account id names its stream: it can be a `#[stream]` field and be
/// emitted to.
impl AsRef<StreamId> for AccountId {
    fn as_ref(&self) -> &StreamId {
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

/// Everything that can happen to one account. Each variant is recorded
/// under its name (`TransferredOut`), which is also serde's tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
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

/// One account folded from its events: the state every command decides on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Account {
    /// The owner, once the account is opened.
    pub(crate) owner: Option<String>,
    /// Current balance in dollars.
    pub(crate) balance: i128,
    /// Events folded so far (the stream's version).
    pub(crate) events: u64,
}

impl State for Account {
    type Event = AccountEvent;

    fn apply(&mut self, event: &AccountEvent) {
        if let AccountEvent::Opened { owner, .. } = event {
            self.owner = Some(owner.clone());
        }
        self.balance += event.delta();
        self.events += 1;
    }

    /// Accounts live long: a command reads the latest snapshot and at most
    /// 100 events after it.
    fn snapshots() -> Option<Snapshots<Self>> {
        Some(Snapshots::new("bank.account").version(1).every(100))
    }
}

impl Account {
    /// `Ok` if the account is open, else the `NotOpen` refusal for `id`.
    fn require_open(&self, id: &AccountId) -> Result<(), BankError> {
        match self.owner {
            Some(_) => Ok(()),
            None => Err(BankError::NotOpen {
                account: id.clone(),
            }),
        }
    }

    /// `Ok` if `amount` can leave the account without overdrawing it.
    fn require_funds(&self, id: &AccountId, amount: u64) -> Result<(), BankError> {
        if self.balance >= i128::from(amount) {
            Ok(())
        } else {
            Err(BankError::InsufficientFunds {
                account: id.clone(),
                balance: self.balance,
                requested: amount,
            })
        }
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
#[derive(Debug, Clone, Command)]
pub(crate) struct OpenAccount {
    /// The new account.
    #[stream]
    pub(crate) account: AccountId,
    /// Its owner.
    pub(crate) owner: String,
    /// Dollars brought in at opening.
    pub(crate) initial_deposit: u64,
}

impl Decide for OpenAccount {
    type State = Account;
    type Error = BankError;

    fn decide(
        &self,
        accounts: &States<Account>,
        d: &mut Decision<AccountEvent>,
    ) -> Result<(), BankError> {
        // Any event at all means the stream exists: never open it twice.
        if accounts.version(&self.account).get() > 0 {
            return Err(BankError::AlreadyOpen {
                account: self.account.clone(),
            });
        }
        let opened = AccountEvent::Opened {
            owner: self.owner.clone(),
            initial_deposit: self.initial_deposit,
        };
        d.emit(&self.account, opened);
        Ok(())
    }
}

/// Puts money into an open account.
#[derive(Debug, Clone, Command)]
pub(crate) struct Deposit {
    /// The receiving account.
    #[stream]
    pub(crate) account: AccountId,
    /// Dollars.
    pub(crate) amount: u64,
}

impl Decide for Deposit {
    type State = Account;
    type Error = BankError;

    fn decide(
        &self,
        accounts: &States<Account>,
        d: &mut Decision<AccountEvent>,
    ) -> Result<(), BankError> {
        if self.amount == 0 {
            return Err(BankError::ZeroAmount);
        }
        accounts[&self.account].require_open(&self.account)?;
        d.emit(
            &self.account,
            AccountEvent::Deposited {
                amount: self.amount,
            },
        );
        Ok(())
    }
}

/// Takes money out of an open account, never below zero.
#[derive(Debug, Clone, Command)]
pub(crate) struct Withdraw {
    /// The paying account.
    #[stream]
    pub(crate) account: AccountId,
    /// Dollars.
    pub(crate) amount: u64,
}

impl Decide for Withdraw {
    type State = Account;
    type Error = BankError;

    fn decide(
        &self,
        accounts: &States<Account>,
        d: &mut Decision<AccountEvent>,
    ) -> Result<(), BankError> {
        if self.amount == 0 {
            return Err(BankError::ZeroAmount);
        }
        let account = &accounts[&self.account];
        account.require_open(&self.account)?;
        account.require_funds(&self.account, self.amount)?;
        d.emit(
            &self.account,
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
#[derive(Debug, Clone, Command)]
pub(crate) struct Transfer {
    /// The paying account.
    #[stream]
    pub(crate) from: AccountId,
    /// The receiving account.
    #[stream]
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
        let transfer_id = Uuid::now_v7();
        Self {
            from,
            to,
            amount,
            transfer_id,
        }
    }
}

impl Decide for Transfer {
    type State = Account;
    type Error = BankError;

    fn decide(
        &self,
        accounts: &States<Account>,
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
        let (from, to) = (&accounts[&self.from], &accounts[&self.to]);
        from.require_open(&self.from)?;
        to.require_open(&self.to)?;
        from.require_funds(&self.from, self.amount)?;
        let (amount, transfer_id) = (self.amount, self.transfer_id);
        let to = self.to.clone();
        d.emit(
            &self.from,
            AccountEvent::TransferredOut {
                amount,
                to,
                transfer_id,
            },
        );
        let from = self.from.clone();
        d.emit(
            &self.to,
            AccountEvent::TransferredIn {
                amount,
                from,
                transfer_id,
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
        let mut account = Account::default();
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
            account.apply(&event);
        }
        assert_eq!(account.owner.as_deref(), Some("Alice"));
        assert_eq!(account.balance, 70);
        assert_eq!(account.events, 5);
    }

    #[test]
    fn events_are_recorded_under_their_serde_tags() {
        let event = AccountEvent::TransferredOut {
            amount: 30,
            to: id("bob"),
            transfer_id: Uuid::nil(),
        };
        assert_eq!(event.event_type(), "TransferredOut");
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["TransferredOut"]["to"], "bob");
        let back: AccountEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
        // An old `Opened` without the optional deposit still decodes.
        let old = serde_json::json!({ "Opened": { "owner": "Carol" } });
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
