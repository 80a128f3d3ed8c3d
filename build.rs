// Embedded migrations must be rebuilt when a migration file changes; and the PostgreSQL half of
// the tests is compiled as ignored when no server is configured, so that a `cargo test` summary
// counts it as ignored, never as passed.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rustc-check-cfg=cfg(postgres_tests)");
    println!("cargo:rerun-if-env-changed=TEST_POSTGRES_URL");
    if std::env::var_os("TEST_POSTGRES_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo:rustc-cfg=postgres_tests");
    }
}
