//! Helpers shared by the raw-protocol test files of this crate.

#![allow(dead_code, reason = "each test binary uses part of it")]

use berth::Client;
use berth_testkit::TestDaemon;

/// Another client that holds a reservation throughout a test, and must not notice anything.
pub async fn bystander(daemon: &TestDaemon) -> (Client, berth::Reservation) {
    let client = Client::connect_to(&daemon.socket).await.unwrap();
    let r = client.acquire(berth::Protocol::Tcp, 0, 2).await.unwrap();
    (client, r)
}

/// Asserts the bystander still holds its reservation and is served.
pub async fn bystander_is_fine(client: &Client, r: &berth::Reservation) {
    let list = client.list().await.unwrap();
    assert!(list.iter().any(|x| x.token == r.token()));
}

/// The tokens of every reservation `client` is shown, in the daemon's order.
pub async fn tokens(client: &Client) -> Vec<berth::Token> {
    client
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.token)
        .collect()
}
