//! `given(history).when(command).then(events)` for command tests.

use std::fmt::Debug;

use crate::{
    AppendRequest, Command, CommandError, CommandExecutor, EventMetadata, EventStore,
    ExpectedVersion, InMemoryEventStore, NewEvent, RetryPolicy, StreamId,
};

/// Starts a command test from a history of `(stream, event)` pairs, stored
/// in order.
///
/// ```
/// use eventcore::testing::{bank::{AccountEvent, Transfer}, given};
/// use eventcore::StreamId;
///
/// let a = StreamId::new("account-a").unwrap();
/// let b = StreamId::new("account-b").unwrap();
/// given([(a.clone(), AccountEvent::Deposited { amount: 10 })])
///     .when(Transfer { from: a.clone(), to: b.clone(), amount: 4 })
///     .then([
///         (a.clone(), AccountEvent::Debited { amount: 4, to: "account-b".into() }),
///         (b.clone(), AccountEvent::Credited { amount: 4, from: "account-a".into() }),
///     ]);
///
/// given([(a.clone(), AccountEvent::Deposited { amount: 10 })])
///     .when(Transfer { from: a, to: b, amount: 11 })
///     .then_rejected(|e| e.wanted == 11);
/// ```
pub fn given<E, I>(history: I) -> CommandTest<E>
where
    E: crate::Event,
    I: IntoIterator<Item = (StreamId, E)>,
{
    CommandTest {
        history: history.into_iter().collect(),
    }
}

/// A history waiting for its command. See [`given`].
#[derive(Debug)]
pub struct CommandTest<E> {
    history: Vec<(StreamId, E)>,
}

impl<E: crate::Event> CommandTest<E> {
    /// Runs `command` once against the history (no retries) and captures
    /// what it appended.
    pub fn when<C: Command<Event = E>>(self, command: C) -> TestOutcome<C> {
        futures::executor::block_on(async move {
            let store = InMemoryEventStore::new();
            for (stream, event) in &self.history {
                let new =
                    NewEvent::new(event, EventMetadata::new()).expect("history event serializes");
                store
                    .append(AppendRequest::new().append(
                        stream.clone(),
                        ExpectedVersion::Any,
                        vec![new],
                    ))
                    .await
                    .expect("seeding the in-memory store cannot fail");
            }
            let before = self.history.len() as u64;
            let executor = CommandExecutor::new(store).with_retry_policy(RetryPolicy::none());
            let result = executor.execute(command).await.map(|_| ());
            let appended = executor
                .store()
                .read_all(crate::GlobalPosition::new(before), usize::MAX)
                .await
                .expect("reading the in-memory store cannot fail")
                .iter()
                .map(|stored| {
                    let decoded = stored.decode::<E>().expect("appended events decode");
                    (decoded.stream_id, decoded.event)
                })
                .collect();
            TestOutcome { result, appended }
        })
    }
}

/// What a command did in a [`given`] test.
pub struct TestOutcome<C: Command> {
    result: Result<(), CommandError<C::Error>>,
    appended: Vec<(StreamId, C::Event)>,
}

impl<C: Command> TestOutcome<C>
where
    C::Event: PartialEq + Debug,
    C::Error: Debug,
{
    /// Asserts the command succeeded and appended exactly `expected`, in order.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = (StreamId, C::Event)>) {
        if let Err(e) = &self.result {
            panic!("expected the command to succeed, it failed: {e:?}");
        }
        let expected: Vec<_> = expected.into_iter().collect();
        assert_eq!(
            self.appended, expected,
            "appended events differ from expected"
        );
    }

    /// Asserts the command was rejected with a business error satisfying
    /// `check`, and appended nothing.
    #[track_caller]
    pub fn then_rejected(self, check: impl FnOnce(&C::Error) -> bool) {
        match &self.result {
            Err(CommandError::Rejected(e)) => {
                assert!(check(e), "rejection {e:?} did not match");
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        assert!(
            self.appended.is_empty(),
            "a rejected command appended {:?}",
            self.appended
        );
    }

    /// Asserts the command failed with a non-business error satisfying `check`.
    #[track_caller]
    pub fn then_error(self, check: impl FnOnce(&CommandError<C::Error>) -> bool) {
        match &self.result {
            Err(e) => assert!(check(e), "error {e:?} did not match"),
            Ok(()) => panic!(
                "expected an error, the command appended {:?}",
                self.appended
            ),
        }
    }

    /// The appended events, for custom assertions.
    pub fn appended(&self) -> &[(StreamId, C::Event)] {
        &self.appended
    }
}
