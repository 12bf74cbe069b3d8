//! Reads the accounts back from their streams and checks the bank's books.

use std::collections::BTreeMap;

use eventcore::{EventStore, State};
use uuid::Uuid;

use crate::domain::{Account, AccountEvent, AccountId, money};

/// One half of a transfer as booked on an account.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Leg {
    from: AccountId,
    to: AccountId,
    amount: u64,
}

/// The accounts folded from their streams, plus what the audit needs.
#[derive(Debug, Default)]
pub(crate) struct Books {
    /// Each account and its folded state, in the order asked for.
    pub(crate) accounts: Vec<(AccountId, Account)>,
    /// Money brought into the bank minus money taken out.
    pub(crate) external: i128,
    outgoing: BTreeMap<Uuid, Leg>,
    incoming: BTreeMap<Uuid, Leg>,
}

impl Books {
    /// Folds every event of every account in `accounts`.
    pub(crate) async fn load<S: EventStore>(
        store: &S,
        accounts: &[AccountId],
    ) -> anyhow::Result<Self> {
        let mut books = Books::default();
        for account in accounts {
            let mut state = Account::default();
            let stored = store
                .read_stream_to_end(account.stream(), eventcore::StreamVersion::NONE.next())
                .await?;
            for stored in &stored {
                let event = stored.decode::<AccountEvent>()?.event;
                state.apply(&event);
                books.external += event.external_delta();
                match event {
                    AccountEvent::TransferredOut {
                        amount,
                        to,
                        transfer_id,
                    } => {
                        let leg = Leg {
                            from: account.clone(),
                            to,
                            amount,
                        };
                        anyhow::ensure!(
                            books.outgoing.insert(transfer_id, leg).is_none(),
                            "transfer {transfer_id} was debited twice"
                        );
                    }
                    AccountEvent::TransferredIn {
                        amount,
                        from,
                        transfer_id,
                    } => {
                        let leg = Leg {
                            from,
                            to: account.clone(),
                            amount,
                        };
                        anyhow::ensure!(
                            books.incoming.insert(transfer_id, leg).is_none(),
                            "transfer {transfer_id} was credited twice"
                        );
                    }
                    _ => {}
                }
            }
            books.accounts.push((account.clone(), state));
        }
        Ok(books)
    }

    /// The sum of all balances.
    pub(crate) fn total(&self) -> i128 {
        self.accounts.iter().map(|(_, s)| s.balance).sum()
    }

    /// Transfers booked (on their paying side).
    pub(crate) fn transfers(&self) -> usize {
        self.outgoing.len()
    }

    /// Prints one line per account and the total.
    pub(crate) fn print(&self) {
        for (account, state) in &self.accounts {
            println!(
                "  {:<8} {:<8} {:>9}   ({} events in stream '{}')",
                account.name(),
                state.owner.as_deref().unwrap_or("(not open)"),
                money(state.balance),
                state.events,
                account.stream(),
            );
        }
        println!("  {:<17} {:>9}", "total", money(self.total()));
    }

    /// The bank's invariants: every dollar is accounted for, no balance is
    /// negative, and every transfer is booked on both sides, with the same
    /// id, accounts and amount.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.total() == self.external,
            "money was created or destroyed: the accounts hold {} but {} was brought in",
            money(self.total()),
            money(self.external)
        );
        if let Some((account, state)) = self.accounts.iter().find(|(_, s)| s.balance < 0) {
            anyhow::bail!("'{account}' is overdrawn: {}", money(state.balance));
        }
        for (id, leg) in &self.outgoing {
            anyhow::ensure!(
                self.incoming.get(id) == Some(leg),
                "transfer {id} ({leg:?}) was debited but not credited the same way"
            );
        }
        anyhow::ensure!(
            self.incoming.len() == self.outgoing.len(),
            "{} transfers were credited without being debited",
            self.incoming.len() - self.outgoing.len()
        );
        Ok(())
    }
}
