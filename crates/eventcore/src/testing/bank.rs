//! A tiny bank: accounts are streams, transfers move money between two of
//! them atomically and never overdraw. The contract suite's concurrency
//! cases use it to check that money is conserved.

use serde::{Deserialize, Serialize};

use crate::{CacheableCommand, Command, Decision, Event, RecordedEvent, StreamId};

/// Events of one account stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountEvent {
    /// Money arrived from outside the bank.
    Deposited {
        /// Amount in cents.
        amount: u64,
    },
    /// Money left for another account.
    Debited {
        /// Amount in cents.
        amount: u64,
        /// The receiving account.
        to: String,
    },
    /// Money arrived from another account.
    Credited {
        /// Amount in cents.
        amount: u64,
        /// The paying account.
        from: String,
    },
}

impl Event for AccountEvent {
    fn event_type(&self) -> &'static str {
        match self {
            AccountEvent::Deposited { .. } => "Deposited",
            AccountEvent::Debited { .. } => "Debited",
            AccountEvent::Credited { .. } => "Credited",
        }
    }
}

impl AccountEvent {
    /// The balance change this event makes to its own account.
    pub fn delta(&self) -> i128 {
        match self {
            AccountEvent::Deposited { amount } | AccountEvent::Credited { amount, .. } => {
                i128::from(*amount)
            }
            AccountEvent::Debited { amount, .. } => -i128::from(*amount),
        }
    }
}

/// The overdraft rule refused a transfer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("insufficient funds in '{account}': balance {balance}, wanted {wanted}")]
pub struct InsufficientFunds {
    /// The paying account.
    pub account: StreamId,
    /// Its balance when the command decided.
    pub balance: i128,
    /// The requested amount.
    pub wanted: u64,
}

/// Moves `amount` from one account to another, refusing to overdraw.
#[derive(Clone, Debug)]
pub struct Transfer {
    /// The paying account.
    pub from: StreamId,
    /// The receiving account.
    pub to: StreamId,
    /// Amount in cents.
    pub amount: u64,
}

impl Command for Transfer {
    type Event = AccountEvent;
    type State = i128;
    type Error = InsufficientFunds;

    fn read_streams(&self) -> Vec<StreamId> {
        vec![self.from.clone(), self.to.clone()]
    }

    fn apply(&self, balance: &mut i128, event: &RecordedEvent<AccountEvent>) {
        if event.stream_id == self.from {
            *balance += event.event.delta();
        }
    }

    fn handle(&self, balance: &i128, d: &mut Decision<AccountEvent>) -> Result<(), Self::Error> {
        if *balance < i128::from(self.amount) {
            return Err(InsufficientFunds {
                account: self.from.clone(),
                balance: *balance,
                wanted: self.amount,
            });
        }
        d.emit(
            &self.from,
            AccountEvent::Debited {
                amount: self.amount,
                to: self.to.to_string(),
            },
        );
        d.emit(
            &self.to,
            AccountEvent::Credited {
                amount: self.amount,
                from: self.from.to_string(),
            },
        );
        Ok(())
    }
}

impl CacheableCommand for Transfer {
    /// The fold depends on the two accounts read, never on the amount.
    fn state_key(&self) -> String {
        format!("{}\u{0}{}", self.from, self.to)
    }
}

/// Withdraws from one account of a pair whose *combined* balance must stay
/// non-negative. It reads both accounts but writes only one: the classic
/// write-skew shape, safe only if the unwritten account is checked too.
#[derive(Clone, Debug)]
pub struct JointWithdraw {
    /// The account to debit.
    pub account: StreamId,
    /// The partner account that is read, not written.
    pub partner: StreamId,
    /// Amount in cents.
    pub amount: u64,
}

impl Command for JointWithdraw {
    type Event = AccountEvent;
    type State = i128;
    type Error = InsufficientFunds;

    fn read_streams(&self) -> Vec<StreamId> {
        vec![self.account.clone(), self.partner.clone()]
    }

    fn apply(&self, combined: &mut i128, event: &RecordedEvent<AccountEvent>) {
        *combined += event.event.delta();
    }

    fn handle(&self, combined: &i128, d: &mut Decision<AccountEvent>) -> Result<(), Self::Error> {
        if *combined < i128::from(self.amount) {
            return Err(InsufficientFunds {
                account: self.account.clone(),
                balance: *combined,
                wanted: self.amount,
            });
        }
        d.emit(
            &self.account,
            AccountEvent::Debited {
                amount: self.amount,
                to: "cash".into(),
            },
        );
        Ok(())
    }
}
