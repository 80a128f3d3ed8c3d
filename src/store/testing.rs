//! A store for the library's own unit tests.

use secrecy::SecretString;

use super::{Extension, ExtensionSpec, NewNode, Store};

/// A SQLite store in `dir` with node `pbx1` and extensions 1001, 1002 and 1003, remote
/// authorization on and no remote credentials yet; returns the rows as stored.
pub(crate) async fn store_with_three_extensions(dir: &std::path::Path) -> (Store, Vec<Extension>) {
    let url = format!("sqlite://{}", dir.join("t.db").display());
    let store = Store::open(&url.parse().unwrap()).await.unwrap();
    store
        .add_node(&NewNode {
            name: "pbx1".into(),
            address: "10.0.0.1".into(),
            nat_address: None,
            nat_sip_port: None,
        })
        .await
        .unwrap();
    let mut rows = Vec::new();
    for number in ["1001", "1002", "1003"] {
        let spec = ExtensionSpec {
            number: number.into(),
            node: "pbx1".into(),
            kind: None,
            use_remote_auth: Some(true),
            sip_password: None,
        };
        let (row, _) = store
            .set_extension(&spec, &SecretString::from("pw"))
            .await
            .unwrap();
        rows.push(row);
    }
    (store, rows)
}
