//! Hostile input, as the fuzz targets in `fuzz/` feed it, but with proptest so that CI runs it on
//! every change: arbitrary bytes into the MBG answer parsers, the token-answer parser, the CSV
//! importer and the configuration loader. None may panic; none may quote a secret it was handed.

use std::collections::HashSet;

use mbg_provision::config::Config;
use mbg_provision::mbg::answers;
use proptest::prelude::*;

const DEVICE_PASSWORD: &str = "Hostile-Set-Side-Pw-7";
const PBX_PASSWORD: &str = "Hostile-Icp-Side-Pw-8";

fn device_list() -> String {
    format!(
        r#"{{"response":[{{"guid":"g1","icp":"MiVO250-1","setside_username":"abc123def456","setside_password":"{DEVICE_PASSWORD}","icpside_username":"1001","icpside_password":"{PBX_PASSWORD}","description":"mbg-provision ext 1001","enabled":true,"clientid":"x"}}]}}"#
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn mbg_answers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = answers::devices(&bytes);
        let _ = answers::icps(&bytes);
        let _ = answers::token(&bytes);
        for status in [400, 401, 403, 404, 429, 500, 503, 599] {
            let _ = answers::refusal(status, &bytes);
        }
    }

    /// An answer cut anywhere (a dropped connection) or with bytes overwritten is refused with
    /// an error that quotes it, redacted: neither password appears.
    #[test]
    fn a_damaged_device_list_is_refused_without_its_passwords(
        cut in 0usize..400,
        at in 0usize..400,
        byte in any::<u8>(),
    ) {
        let mut body = device_list().into_bytes();
        let at = at % body.len();
        // Overwrite one byte that is not inside a password or its key, or cut the answer.
        let protected = |i: usize| {
            let text = device_list();
            ["\"setside_password\":\"", "\"icpside_password\":\""].iter().any(|key| {
                let start = text.find(key).unwrap();
                let end = start + key.len() + DEVICE_PASSWORD.len() + 1;
                (start..end).contains(&i)
            })
        };
        if !protected(at) {
            body[at] = byte;
        }
        body.truncate(cut.min(body.len()));
        if let Err(e) = answers::devices(&body) {
            let message = e.to_string();
            prop_assert!(!message.contains(DEVICE_PASSWORD), "{}", message);
            prop_assert!(!message.contains(PBX_PASSWORD), "{}", message);
        }
    }

    #[test]
    fn token_answers_never_panic(text in "[a-z_=&%+/0-9A-F]{0,120}") {
        if let Ok(token) = answers::token(text.as_bytes()) {
            let debug = format!("{token:?}");
            prop_assert!(!debug.contains("oauth_token="), "{}", debug);
        }
    }

    #[test]
    fn the_csv_importer_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let nodes: HashSet<String> = ["pbx1".to_string()].into();
        let _ = mbg_provision::import::parse(bytes.as_slice(), &nodes);
    }

    /// CSV-shaped input: every refusal names a line, and what is accepted is all of it.
    #[test]
    fn csv_rows_are_accepted_whole_or_refused_with_a_line(
        rows in proptest::collection::vec(
            ("[0-9]{1,6}|[a-z ]{0,4}", "pbx1|pbx9|", "sip|sip_hot_desk|fax|", "on|off|yes|maybe|"),
            0..20,
        )
    ) {
        let mut csv = String::from("number,node,kind,remote\n");
        for (number, node, kind, remote) in &rows {
            csv.push_str(&format!("{number},{node},{kind},{remote}\n"));
        }
        let nodes: HashSet<String> = ["pbx1".to_string()].into();
        match mbg_provision::import::parse(csv.as_bytes(), &nodes) {
            Ok(parsed) => prop_assert_eq!(parsed.len(), rows.len()),
            Err(e) => prop_assert!(e.to_string().contains("line"), "{}", e),
        }
    }

    /// Any TOML after a database URL with a password: the loader never panics and its errors
    /// never quote the password.
    #[test]
    fn the_config_loader_never_panics_nor_quotes_a_url_password(text in "\\PC{0,200}") {
        let document = format!("[database]\nurl = \"postgres://u:Url-Pw-4242@h/db\"\n{text}");
        if let Err(e) = Config::from_toml(&document) {
            let message = e.to_string();
            prop_assert!(!message.contains("Url-Pw-4242"), "{}", message);
        }
    }

    #[test]
    fn config_like_lines_never_quote_a_url_password(
        lines in proptest::collection::vec(
            ("\\[(mbg|database|token|http)\\]|[a-z_]{1,14}", " = ", "\"[^\"]{0,20}\"|[0-9]{1,4}|true|\\[\\]|\"postgres://x:Url-Pw-4242@h/d\""),
            0..8,
        )
    ) {
        let mut document = String::from("[database]\nurl = \"postgres://u:Url-Pw-4242@h/db\"\n");
        for (key, eq, value) in &lines {
            if key.starts_with('[') {
                document.push_str(&format!("{key}\n"));
            } else {
                document.push_str(&format!("{key}{eq}{value}\n"));
            }
        }
        if let Err(e) = Config::from_toml(&document) {
            let message = e.to_string();
            prop_assert!(!message.contains("Url-Pw-4242"), "{}", message);
        }
    }
}
