use eventcore::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(version = 0)]
struct VersionZero;

#[derive(Serialize, Deserialize, Event)]
#[event(nmae = "Typo")]
struct UnknownKey;

#[derive(Serialize, Deserialize, Event)]
enum VersionOnVariant {
    #[event(version = 2)]
    A,
}

#[derive(Serialize, Deserialize, Event)]
enum SameName {
    A,
    #[event(name = "A")]
    B,
}

#[derive(Serialize, Deserialize, Event)]
#[serde(untagged)]
enum Untagged {
    A { n: u64 },
    B { n: u64 },
}

#[derive(Serialize, Deserialize, Event)]
enum Empty {}

fn main() {}
