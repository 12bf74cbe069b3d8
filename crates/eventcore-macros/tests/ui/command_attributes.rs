use eventcore::{Command, StreamId};

#[derive(Command)]
struct NoStreams {
    account: StreamId,
}

#[derive(Command)]
enum NotAStruct {
    A,
}

#[derive(Command)]
struct StreamWithArguments {
    #[stream(primary)]
    account: StreamId,
}

fn main() {}
