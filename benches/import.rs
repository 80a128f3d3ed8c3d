//! `cargo bench --bench import`: how long `extension import` takes for 1k, 4k, 16k and 100k rows,
//! and whether that is linear. Each size is parsed from CSV (as the CLI does) and written into a
//! fresh SQLite file, and into a fresh PostgreSQL database when `TEST_POSTGRES_URL` is set (the
//! database is created and dropped here). No thresholds: it prints, a person reads.
//!
//! Linearity = time(100k) / (100 × time(1k)): about 1 is linear (below 1 when fixed costs dominate
//! the small run), far above 1 is not.

use std::collections::HashSet;
use std::time::Instant;

use mbg_provision::config::DatabaseUrl;
use mbg_provision::import;
use mbg_provision::store::{ExtensionSpec, NewNode, Store};
use secrecy::SecretString;
use sqlx::{Connection, Executor};

const SIZES: [usize; 4] = [1_000, 4_000, 16_000, 100_000];
const NODES: [&str; 4] = ["pbx1", "pbx2", "pbx3", "pbx4"];

fn csv(rows: usize) -> String {
    let mut text = String::from(import::HEADER);
    text.push('\n');
    for i in 0..rows {
        let kind = if i % 7 == 0 { "sip-hot-desk" } else { "sip" };
        let remote = if i % 3 == 0 { "on" } else { "off" };
        text.push_str(&format!(
            "{},{},{kind},{remote}\n",
            1_000_000 + i,
            NODES[i % NODES.len()]
        ));
    }
    text
}

/// Seconds to parse and write `rows` rows into the empty database at `url`.
async fn import_into(url: &str, rows: usize) -> f64 {
    let store = Store::open(&url.parse::<DatabaseUrl>().expect("database URL"))
        .await
        .expect("open the store");
    for (i, name) in NODES.iter().enumerate() {
        store
            .add_node(&NewNode {
                name: (*name).into(),
                address: format!("10.0.0.{}", 20 + i),
                nat_address: None,
                nat_sip_port: None,
            })
            .await
            .expect("add node");
    }
    let text = csv(rows);
    let known: HashSet<String> = NODES.iter().map(|n| n.to_string()).collect();
    let mut counter = 0u64;
    let started = Instant::now();
    let parsed = import::parse(text.as_bytes(), &known).expect("a good file");
    let specs: Vec<ExtensionSpec> = parsed.into_iter().map(|r| r.spec).collect();
    let parsed_in = started.elapsed().as_secs_f64();
    let created = store
        .set_extensions(&specs, || {
            counter += 1;
            SecretString::from(format!("bench-password-{counter:012}"))
        })
        .await
        .expect("import");
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(created, rows);
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        eprintln!(
            "  {rows} rows: parse {parsed_in:.3} s, write {:.3} s",
            seconds - parsed_in
        );
    }
    store.close().await;
    seconds
}

async fn sqlite(rows: usize) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    import_into(&url, rows).await
}

async fn postgres(admin_url: &str, rows: usize) -> f64 {
    let name = format!("mbgp_bench_import_{}_{rows}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("TEST_POSTGRES_URL reachable");
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .expect("create the bench database");
    let mut url = url::Url::parse(admin_url).expect("TEST_POSTGRES_URL is a URL");
    url.set_path(&name);
    let seconds = import_into(url.as_str(), rows).await;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .await
        .expect("drop the bench database");
    admin.close().await.ok();
    seconds
}

fn report(backend: &str, times: &[(usize, f64)]) {
    println!("{backend}:");
    for (rows, seconds) in times {
        println!(
            "  {rows:>7} rows  {seconds:>7.3} s  {:>6.4} s per 1k rows",
            seconds / (*rows as f64 / 1_000.0)
        );
    }
    let time_of = |n: usize| times.iter().find(|(rows, _)| *rows == n).map(|t| t.1);
    if let (Some(small), Some(large)) = (time_of(1_000), time_of(100_000)) {
        println!(
            "  linearity time(100k) / (100 × time(1k)) = {:.2}",
            large / (100.0 * small)
        );
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; a name filter is not supported (there is one benchmark).
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("extension import ({profile} build)");
    let mut times = Vec::new();
    for rows in SIZES {
        times.push((rows, sqlite(rows).await));
    }
    report("SQLite", &times);
    match std::env::var("TEST_POSTGRES_URL") {
        Ok(admin_url) => {
            let mut times = Vec::new();
            for rows in SIZES {
                times.push((rows, postgres(&admin_url, rows).await));
            }
            report("PostgreSQL", &times);
        }
        Err(_) => println!("PostgreSQL: skipped (set TEST_POSTGRES_URL to run it)"),
    }
}
