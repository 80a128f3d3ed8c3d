//! Configuration loading: the example file, discovery, environment overrides, and errors that name
//! the key and where it came from. `figment::Jail` gives each test its own working folder and
//! environment, serialised with the other config tests.

// `figment::Jail` closures must return `figment::Error`, a large type that is not ours to box.
#![allow(clippy::result_large_err)]

use std::path::Path;
use std::time::Duration;

use figment::Jail;
use mbg_provision::config::{Config, ConfigError, LogFormat};

fn problems(err: ConfigError) -> String {
    match err {
        ConfigError::Invalid(_) => err.to_string(),
        other => panic!("expected an invalid configuration, got {other}"),
    }
}

#[test]
fn the_example_file_loads_and_documents_the_defaults() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml.example");
    let config = Config::load(Some(&example)).expect("example loads");
    let defaults = Config::default();
    // The example's relative file, taken from the example's folder.
    assert_eq!(
        config.database.url.expose(),
        format!("sqlite://{}/mbg-provision.db", env!("CARGO_MANIFEST_DIR"))
    );
    assert_eq!(defaults.database.url.expose(), "sqlite://mbg-provision.db");
    assert_eq!(
        config.mbg.base_url.unwrap().as_str(),
        "https://10.0.0.5/mslrest"
    );
    assert_eq!(config.mbg.ca_file, None);
    assert_eq!(config.mbg.max_in_flight, 8);
    assert_eq!(config.mbg.timeout, Duration::from_secs(10));
    assert_eq!(config.mbg.max_retry_after, Duration::from_secs(300));
    assert_eq!(config.mbg.teleworker_licences, None);
    assert_eq!(config.watch.poll_interval, Duration::from_secs(1));
    assert_eq!(config.reconcile.interval, Duration::from_secs(300));
    assert_eq!(config.token.renew_schedule.expression(), "0 0 3 * * *");
    assert_eq!(config.token.renew_within_days, 30);
    assert_eq!(config.credentials.name_length, 12);
    assert_eq!(config.credentials.password_length, 20);
    assert_eq!(config.http.listen.to_string(), "127.0.0.1:9187");
    assert_eq!(config.log.format, LogFormat::Text);
    // Everything the example sets equals the built-in default (base_url has none).
    assert_eq!(config.mbg.timeout, defaults.mbg.timeout);
    assert_eq!(config.http.listen, defaults.http.listen);
    assert_eq!(
        config.token.renew_schedule.expression(),
        defaults.token.renew_schedule.expression()
    );
}

#[test]
fn config_toml_in_the_working_folder_is_found_and_env_wins() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "config.toml",
            "[mbg]\nbase_url = \"https://mbg.example.com/mslrest/\"\ntimeout = \"30s\"\n[watch]\npoll_interval = \"500ms\"\n",
        )?;
        jail.set_env("MBG_PROVISION_MBG__TIMEOUT", "2m");
        jail.set_env(
            "MBG_PROVISION_DATABASE__URL",
            "postgres://prov@db.example.com/pbx",
        );
        jail.set_env("MBG_PROVISION_TOKEN__RENEW_WITHIN_DAYS", "45");
        // Not a config key: the consumer secret for `token request`.
        jail.set_env("MBG_PROVISION_CONSUMER_SECRET", "s3cret");
        let config = Config::load(None).expect("loads");
        assert_eq!(
            config.mbg.base_url.unwrap().as_str(),
            "https://mbg.example.com/mslrest"
        );
        assert_eq!(config.mbg.timeout, Duration::from_secs(120));
        assert_eq!(config.watch.poll_interval, Duration::from_millis(500));
        assert!(config.database.url.is_postgres());
        assert_eq!(config.token.renew_within_days, 45);
        Ok(())
    });
}

#[test]
fn no_file_means_defaults_and_a_named_missing_file_is_an_error() {
    Jail::expect_with(|jail| {
        let config = Config::load(None).expect("defaults");
        assert!(config.mbg.base_url.is_none());
        let err = Config::load(Some(Path::new("nope.toml"))).unwrap_err();
        assert!(matches!(err, ConfigError::MissingFile(_)));
        let tried = jail.directory().join("nope.toml");
        assert!(
            err.to_string().contains(&tried.display().to_string()),
            "the absolute path: {err}"
        );
        Ok(())
    });
}

#[test]
fn relative_paths_in_a_file_mean_its_folder_and_in_the_environment_the_working_one() {
    Jail::expect_with(|jail| {
        std::fs::create_dir(jail.directory().join("etc")).unwrap();
        jail.create_file(
            "etc/config.toml",
            "[database]\nurl = \"sqlite://state/db.sqlite?mode=rwc\"\n[mbg]\nca_file = \"ca.pem\"\n[secrets]\nkey_file = \"/var/lib/x/key\"\n",
        )?;
        let etc = jail.directory().join("etc");
        let config = Config::load(Some(Path::new("etc/config.toml"))).expect("loads");
        assert_eq!(
            config.database.url.expose(),
            format!("sqlite://{}/state/db.sqlite?mode=rwc", etc.display())
        );
        assert_eq!(config.mbg.ca_file, Some(etc.join("ca.pem")));
        assert_eq!(
            config.secrets.key_file.as_deref(),
            Some(Path::new("/var/lib/x/key")),
            "absolute paths stay"
        );

        jail.set_env("MBG_PROVISION_MBG__CA_FILE", "here.pem");
        jail.set_env("MBG_PROVISION_DATABASE__URL", "sqlite://here.db");
        let config = Config::load(Some(Path::new("etc/config.toml"))).expect("loads");
        assert_eq!(config.mbg.ca_file.as_deref(), Some(Path::new("here.pem")));
        assert_eq!(config.database.url.expose(), "sqlite://here.db");
        Ok(())
    });
}

#[test]
fn a_tls_certificate_without_its_key_names_the_missing_key() {
    Jail::expect_with(|jail| {
        jail.create_file("site.toml", "[http]\ntls_cert = \"console.pem\"\n")?;
        let message = problems(Config::load(Some(Path::new("site.toml"))).unwrap_err());
        assert!(message.contains("`http.tls_key`"), "{message}");
        assert!(message.contains("site.toml"), "{message}");
        assert!(message.contains("both or neither"), "{message}");
        jail.create_file(
            "both.toml",
            "[http]\ntls_cert = \"console.pem\"\ntls_key = \"console.key\"\n",
        )?;
        let config = Config::load(Some(Path::new("both.toml"))).expect("loads");
        assert_eq!(
            config.http.tls_key,
            Some(jail.directory().join("console.key")),
            "relative to the file"
        );
        assert!(config.http.is_tls());
        Ok(())
    });
}

#[test]
fn unknown_keys_are_errors_naming_key_and_file() {
    Jail::expect_with(|jail| {
        jail.create_file("site.toml", "[mbg]\ntimeout = \"5s\"\ntimout = \"5s\"\n")?;
        let message = problems(Config::load(Some(Path::new("site.toml"))).unwrap_err());
        assert!(message.contains("`mbg.timout`"), "{message}");
        assert!(message.contains("site.toml"), "{message}");
        assert!(message.contains("unknown key"), "{message}");

        jail.create_file("section.toml", "[mgb]\nbase_url = \"https://x/mslrest\"\n")?;
        let message = problems(Config::load(Some(Path::new("section.toml"))).unwrap_err());
        assert!(message.contains("`mgb`"), "{message}");

        jail.set_env("MBG_PROVISION_DATABASE__URI", "sqlite://x.db");
        let message = problems(Config::load(None).unwrap_err());
        assert!(message.contains("`database.uri`"), "{message}");
        assert!(
            message.contains("environment variable MBG_PROVISION_DATABASE__URI"),
            "{message}"
        );
        Ok(())
    });
}

#[test]
fn bad_durations_name_the_key_and_the_source() {
    Jail::expect_with(|jail| {
        jail.create_file("config.toml", "[reconcile]\ninterval = \"5 parsecs\"\n")?;
        let message = problems(Config::load(None).unwrap_err());
        assert!(message.contains("`reconcile.interval`"), "{message}");
        assert!(message.contains("config.toml"), "{message}");
        assert!(message.contains("unknown unit"), "{message}");

        jail.create_file("config.toml", "[reconcile]\ninterval = 300\n")?;
        let message = problems(Config::load(None).unwrap_err());
        assert!(message.contains("has no unit"), "{message}");

        jail.create_file("config.toml", "")?;
        jail.set_env("MBG_PROVISION_WATCH__POLL_INTERVAL", "soon");
        let message = problems(Config::load(None).unwrap_err());
        assert!(message.contains("`watch.poll_interval`"), "{message}");
        assert!(
            message.contains("environment variable MBG_PROVISION_WATCH__POLL_INTERVAL"),
            "{message}"
        );
        Ok(())
    });
}

#[test]
fn cron_needs_six_fields_and_says_so() {
    Jail::expect_with(|jail| {
        jail.create_file("config.toml", "[token]\nrenew_schedule = \"0 3 * * *\"\n")?;
        let message = problems(Config::load(None).unwrap_err());
        assert!(message.contains("`token.renew_schedule`"), "{message}");
        assert!(message.contains("6 fields are needed"), "{message}");
        assert!(
            message.contains("\"0 0 3 * * *\""),
            "suggests the fix: {message}"
        );

        jail.create_file(
            "config.toml",
            "[token]\nrenew_schedule = \"0 0 25 * * *\"\n",
        )?;
        let message = problems(Config::load(None).unwrap_err());
        assert!(message.contains("not a cron expression"), "{message}");

        jail.create_file("config.toml", "[token]\nrenew_schedule = \"@weekly\"\n")?;
        let config = Config::load(None).expect("@weekly is accepted");
        assert_eq!(config.token.renew_schedule.expression(), "@weekly");
        Ok(())
    });
}

#[test]
fn clear_text_to_a_remote_mbg_is_refused() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "config.toml",
            "[mbg]\nbase_url = \"http://10.0.0.5/mslrest\"\n",
        )?;
        let message = problems(Config::load(None).unwrap_err());
        assert!(message.contains("`mbg.base_url`"), "{message}");
        assert!(message.contains("non-loopback"), "{message}");

        jail.create_file(
            "config.toml",
            "[mbg]\nbase_url = \"http://127.0.0.1:8080/mslrest\"\n",
        )?;
        assert!(Config::load(None).is_ok());
        Ok(())
    });
}

#[test]
fn out_of_range_numbers_and_several_problems_are_all_reported() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "config.toml",
            "[credentials]\npassword_length = 8\n[mbg]\nmax_in_flight = 0\n[log]\nformat = \"xml\"\n[http]\nlisten = \"everywhere\"\n",
        )?;
        let message = problems(Config::load(None).unwrap_err());
        for key in [
            "`credentials.password_length`",
            "64 bits",
            "`mbg.max_in_flight`",
            "`log.format`",
            "`http.listen`",
        ] {
            assert!(message.contains(key), "{key} missing from: {message}");
        }
        Ok(())
    });
}

#[test]
fn zero_durations_are_refused_naming_the_key_and_the_source() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "config.toml",
            "[mbg]\ntimeout = \"0s\"\n[reconcile]\ninterval = \"0m\"\n[database]\nconnect_timeout = \"0ms\"\n",
        )?;
        jail.set_env("MBG_PROVISION_WATCH__POLL_INTERVAL", "0ms");
        let message = problems(Config::load(None).unwrap_err());
        for key in [
            "`mbg.timeout` in config file",
            "`reconcile.interval` in config file",
            "`database.connect_timeout` in config file",
            "`watch.poll_interval` in environment variable MBG_PROVISION_WATCH__POLL_INTERVAL",
        ] {
            assert!(message.contains(key), "{key} missing from: {message}");
        }
        assert!(message.contains("config.toml"), "{message}");
        assert_eq!(
            message.matches("more than zero").count(),
            4,
            "one problem per key: {message}"
        );
        Ok(())
    });
}

#[test]
fn the_database_connect_timeout_defaults_to_five_seconds_and_can_be_set() {
    Jail::expect_with(|jail| {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml.example");
        let config = Config::load(Some(&example)).expect("example loads");
        assert_eq!(config.database.connect_timeout, Duration::from_secs(5));
        assert_eq!(
            Config::default().database.connect_timeout,
            Duration::from_secs(5)
        );
        jail.set_env("MBG_PROVISION_DATABASE__CONNECT_TIMEOUT", "750ms");
        let config = Config::load(None).expect("loads");
        assert_eq!(config.database.connect_timeout, Duration::from_millis(750));
        Ok(())
    });
}

#[test]
fn a_renewal_window_of_a_year_or_more_is_refused() {
    Jail::expect_with(|jail| {
        jail.create_file("config.toml", "[token]\nrenew_within_days = 365\n")?;
        let message = problems(Config::load(None).unwrap_err());
        assert!(message.contains("`token.renew_within_days`"), "{message}");
        assert!(message.contains("config.toml"), "{message}");
        assert!(message.contains("364"), "says the limit: {message}");

        jail.create_file("config.toml", "[token]\nrenew_within_days = 364\n")?;
        assert_eq!(Config::load(None).unwrap().token.renew_within_days, 364);
        Ok(())
    });
}

#[test]
fn seven_field_cron_lines_are_refused() {
    Jail::expect_with(|jail| {
        jail.set_env("MBG_PROVISION_TOKEN__RENEW_SCHEDULE", "0 0 3 * * * 2030");
        let message = problems(Config::load(None).unwrap_err());
        assert!(message.contains("`token.renew_schedule`"), "{message}");
        assert!(
            message.contains("environment variable MBG_PROVISION_TOKEN__RENEW_SCHEDULE"),
            "{message}"
        );
        assert!(message.contains("7 fields"), "{message}");
        assert!(
            message.contains("\"0 0 3 * * *\""),
            "suggests the fix: {message}"
        );
        Ok(())
    });
}
