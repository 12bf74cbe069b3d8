use eventcore::Command;

#[derive(Command)]
struct Deposit {
    #[stream]
    account: String,
    amount: u64,
}

fn main() {}
