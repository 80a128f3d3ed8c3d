//! The console in a real browser: Debian's Chromium, headless, driven through chromedriver's
//! WebDriver protocol (plain HTTP + JSON, spoken here with reqwest), against the real daemon
//! and the MBG simulator. Requests a browser would never send (a viewer's raw POST, a
//! cross-site POST) are sent with reqwest. Screenshots of each page land in
//! `target/console-screenshots/`.
//!
//! Without chromium and chromedriver the browser tests say SKIPPED; `.ci/run` installs both
//! and sets `TEST_REQUIRE_CHROMIUM=1`, which turns a missing browser into a failure.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use mbg_provision::store::ExtensionState;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::mbg::{Harness, sim_config};
use crate::service::{Daemon, free_port};
use crate::support::TestDb;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A form post as a browser sends it (reqwest's own `form` needs a feature the product does not).
trait FormPost {
    fn form_pairs(self, pairs: &[(&str, &str)]) -> Self;
}

impl FormPost for reqwest::RequestBuilder {
    fn form_pairs(self, pairs: &[(&str, &str)]) -> Self {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    }
}

/// A headless Chromium session, ended (and chromedriver stopped) when dropped.
struct Browser {
    driver: Child,
    http: reqwest::Client,
    session: String,
    base: String,
}

impl Browser {
    /// `None` (said loudly) when this machine has no chromium or chromedriver.
    async fn start() -> Option<Browser> {
        let found = |program: &str| {
            Command::new(program)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !found("chromedriver") || !found("chromium") {
            assert!(
                std::env::var("TEST_REQUIRE_CHROMIUM").is_err(),
                "TEST_REQUIRE_CHROMIUM is set but chromium or chromedriver is missing"
            );
            eprintln!(
                "SKIPPED the console's browser tests: chromium and chromium-driver are not installed (apt install chromium chromium-driver; .ci/run does)"
            );
            return None;
        }
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let started = Instant::now();
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver answers"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000"]
            }
        }}});
        let answer: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("a WebDriver session: {answer}"))
            .to_string();
        let browser = Browser {
            driver,
            http,
            session,
            base,
        };
        // An element looked for right after a click that loads a page is waited for.
        browser
            .call(
                reqwest::Method::POST,
                "/timeouts",
                Some(json!({"implicit": 5000})),
            )
            .await;
        Some(browser)
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        answer["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The element `css` selects; `None` when there is none.
    async fn find(&self, css: &str) -> Option<String> {
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found[ELEMENT].as_str().map(str::to_string)
    }

    async fn element(&self, css: &str) -> String {
        self.find(css)
            .await
            .unwrap_or_else(|| panic!("no element {css:?} on the page"))
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/clear"),
            Some(json!({})),
        )
        .await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let element = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// Clicks what submits a form, and waits until the page it loads is there (a click returns
    /// before the next page has replaced the current one).
    async fn submit(&self, css: &str) {
        self.script("window.beforeSubmit = true;").await;
        self.click(css).await;
        let started = Instant::now();
        while self
            .script("return window.beforeSubmit === true || document.readyState !== 'complete';")
            .await
            != json!(false)
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no page after clicking {css:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn text(&self, css: &str) -> String {
        let element = self.element(css).await;
        self.call(
            reqwest::Method::GET,
            &format!("/element/{element}/text"),
            None,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    async fn value(&self, css: &str) -> String {
        let element = self.element(css).await;
        self.call(
            reqwest::Method::GET,
            &format!("/element/{element}/property/value"),
            None,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    async fn script(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    async fn cookie(&self, name: &str) -> String {
        self.call(reqwest::Method::GET, &format!("/cookie/{name}"), None)
            .await["value"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn screenshot(&self, name: &str) {
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .unwrap_or_default();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join("console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), bytes).unwrap();
    }

    async fn sign_in(&self, name: &str, password: &str) {
        self.type_into("#username", name).await;
        self.type_into("#password", password).await;
        self.submit("form[action='/login'] button").await;
    }
}

impl Drop for Browser {
    /// Ends the session (chromedriver then closes Chromium), then stops chromedriver. Plain
    /// blocking HTTP: there is no runtime to await on in a drop.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let address = self.base.trim_start_matches("http://");
        if let Ok(mut stream) = std::net::TcpStream::connect(address) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(
                stream,
                "DELETE /session/{} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n",
                self.session
            );
            let _ = stream.read_to_end(&mut Vec::new());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The site: the daemon with a token, a node, and three console accounts.
struct Site {
    h: Harness,
    daemon: Daemon,
    dir: tempfile::TempDir,
    url: String,
}

const PASSWORD: &str = "a long console password";

impl Site {
    async fn start() -> Site {
        Site::start_with(true).await
    }

    /// With the MBG token or without (the daemon then waits for one, serving the console).
    async fn start_with(token: bool) -> Site {
        Site::configured(token, None).await
    }

    /// With the daemon reading `config` from `dir/config.toml`, when given.
    async fn configured(token: bool, config: Option<&str>) -> Site {
        let mut h = Harness::new(TestDb::sqlite().await, sim_config()).await;
        if token {
            h = h.with_token().await;
        }
        let dir = tempfile::tempdir().unwrap();
        let cli = |args: &[&str]| {
            let output = crate::support::binary()
                .current_dir(dir.path())
                .env("MBG_PROVISION_DATABASE__URL", &h.db.url)
                .env("MBG_PROVISION_SECRETS__KEY_FILE", &h.db.key_file)
                .args(args)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
        let file = password_file.to_str().unwrap();
        cli(&[
            "node",
            "add",
            "pbx1",
            "--address",
            "10.0.0.20",
            "--nat-address",
            "203.0.113.7",
        ]);
        for (name, role) in [("ada", "admin"), ("otto", "operator"), ("vera", "viewer")] {
            cli(&[
                "console",
                "user",
                "add",
                name,
                "--role",
                role,
                "--password-file",
                file,
            ]);
        }
        let config_file = dir.path().join("config.toml");
        let daemon = match config {
            Some(text) => {
                std::fs::write(&config_file, text).unwrap();
                Daemon::start_env(
                    &h,
                    dir.path(),
                    &["--config", config_file.to_str().unwrap()],
                    &[],
                )
            }
            None => Daemon::start(&h, dir.path()),
        };
        if token {
            daemon.leading_after_a_full_pass().await;
        } else {
            crate::service::eventually(
                "the console answers",
                Duration::from_secs(20),
                async || daemon.health().await.is_some(),
            )
            .await;
        }
        let url = format!("http://127.0.0.1:{}", daemon.port);
        Site {
            h,
            daemon,
            dir,
            url,
        }
    }

    /// A console page as `cookie`'s account sees it, without a browser.
    async fn page(&self, cookie: &str, path: &str) -> String {
        let answer = reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "GET {path}");
        answer.text().await.unwrap()
    }

    /// A session cookie for `name`, signed in without a browser.
    async fn cookie(&self, name: &str) -> String {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let answer = client
            .post(format!("{}/login", self.url))
            .form_pairs(&[("username", name), ("password", PASSWORD)])
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 303, "{name} signs in");
        let cookie = answer.headers()["set-cookie"].to_str().unwrap();
        cookie.split(';').next().unwrap().to_string()
    }
}

async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The engineer's path: sent to sign in and back, a wrong password, the SIP Authorization form
/// of a new extension with random candidates, Save, the MBG's ID on the page without a reload,
/// untick and the SIP user is gone; every change audited with the console user's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tick_save_and_the_mbg_id_appears_untick_and_it_is_gone() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let site = Site::start().await;
    browser.go(&format!("{}/extensions/1001", site.url)).await;
    assert!(
        browser.url().await.contains("/login?next="),
        "sent to sign in"
    );
    browser.screenshot("login").await;

    browser.sign_in("otto", "not the password").await;
    assert_eq!(
        browser.text("[data-field=error]").await,
        "Wrong name or password."
    );
    browser.sign_in("otto", PASSWORD).await;
    assert!(
        browser.url().await.ends_with("/extensions/1001"),
        "back where it was going: {}",
        browser.url().await
    );
    let cookie = browser.cookie(mbg_provision::console::SESSION_COOKIE).await;
    assert_eq!(cookie.len(), 43, "a 256-bit session id");

    // A new extension: random candidates in the form, the box not ticked yet.
    let candidate_name = browser.value("#remote_auth_name").await;
    let candidate_password = browser.value("#remote_auth_password").await;
    assert_eq!(candidate_name.len(), 12, "{candidate_name:?}");
    assert_eq!(candidate_password.len(), 20);
    browser.click("#use_remote_auth").await;
    browser.screenshot("sip-authorization").await;
    browser
        .submit("form.sip-authorization button[type=submit]")
        .await;
    assert!(browser.url().await.ends_with("/extensions/1001?node=pbx1"));

    // The page follows the extension: the MBG's ID appears without a reload.
    browser.script("window.notReloaded = true;").await;
    let started = Instant::now();
    let shown = eventually(
        "the MBG's ID on the page",
        Duration::from_secs(10),
        async || Some(browser.text("[data-field=mbg_device_id]").await).filter(|t| !t.is_empty()),
    )
    .await;
    let took = started.elapsed();
    eprintln!("console: the MBG's ID on the page {took:?} after Save");
    assert_eq!(
        browser.script("return window.notReloaded === true;").await,
        true
    );
    assert!(
        took < Duration::from_secs(2),
        "the MBG's ID within 2 s: {took:?}"
    );
    let row = site.h.db.store.extension_by_number("1001").await.unwrap();
    assert_eq!(row.mbg_device_id.as_deref(), Some(shown.as_str()));
    assert_eq!(
        row.remote_auth_name.as_deref(),
        Some(candidate_name.as_str())
    );
    let devices = site.h.sim.devices();
    let device = devices
        .iter()
        .find(|d| d.guid == shown)
        .expect("on the MBG");
    assert_eq!(device.setside_username, candidate_name);
    assert_eq!(device.setside_password, candidate_password);
    assert_eq!(browser.text("[data-field=state]").await, "provisioned");
    assert_eq!(
        browser.text("[data-field=registrar]").await,
        "203.0.113.7:5060"
    );
    // After Save the password is hidden until Reveal.
    assert_eq!(browser.value("#remote_auth_password").await, "");
    browser.screenshot("provisioned").await;
    browser
        .submit("form[action='/extensions/1001/reveal?node=pbx1'] button")
        .await;
    assert_eq!(
        browser.value("#remote_auth_password").await,
        candidate_password
    );

    // Whose the SIP users with its number are, asked of the MBG on a click: ours, and one
    // added by hand under the other ICP.
    let by_hand = site
        .h
        .sim
        .add_device(crate::mbg::sip_user(
            "MiVO250-2",
            "1001",
            "by-hand-1001",
            "a-long-password-1",
        ))
        .unwrap();
    browser.click("[data-field=ask_the_mbg]").await;
    let whose = |guid: &str| format!("tr[data-guid='{guid}'] [data-field=whose]");
    assert_eq!(
        browser.text(&whose(&shown)).await,
        "ours, recorded against extension 1001"
    );
    assert!(
        browser
            .text(&whose(&by_hand))
            .await
            .starts_with("not ours (added by hand on the MBG)"),
        "{}",
        browser.text(&whose(&by_hand)).await
    );
    assert_eq!(browser.text("[data-field=icp]").await, "MiVO250-1");
    browser.screenshot("extension-on-the-mbg").await;

    // Untick: our SIP user goes, the one added by hand stays.
    browser.go(&format!("{}/extensions/1001", site.url)).await;
    browser.click("#use_remote_auth").await;
    browser
        .submit("form.sip-authorization button[type=submit]")
        .await;
    eventually(
        "the SIP user removed",
        Duration::from_secs(10),
        async || {
            let guids: Vec<String> = site.h.sim.devices().into_iter().map(|d| d.guid).collect();
            (guids == [by_hand.clone()]).then_some(())
        },
    )
    .await;
    eventually("idle on the page", Duration::from_secs(5), async || {
        (browser.text("[data-field=state]").await == "idle").then_some(())
    })
    .await;
    let row = site.h.db.store.extension_by_number("1001").await.unwrap();
    assert_eq!(row.state, ExtensionState::Idle);
    let audit = site.h.db.store.audit_of("1001", 50).await.unwrap();
    let by_otto: Vec<&str> = audit
        .iter()
        .filter(|a| a.actor.as_deref() == Some("otto"))
        .map(|a| a.action.as_str())
        .collect();
    assert_eq!(
        by_otto,
        ["save", "reveal", "save"],
        "newest first: {audit:?}"
    );
    assert!(
        audit.iter().all(|a| !a
            .detail
            .as_deref()
            .unwrap_or_default()
            .contains(&candidate_password)),
        "no secret in the audit"
    );

    // The list and the dashboard.
    browser
        .go(&format!("{}/extensions?prefix=10", site.url))
        .await;
    assert_eq!(
        browser
            .text("tr[data-number='1001'] [data-field=state]")
            .await,
        "idle"
    );
    browser.screenshot("extensions").await;
    browser.go(&format!("{}/", site.url)).await;
    assert_eq!(browser.text("dd[data-field=role]").await, "leader");
    browser.screenshot("dashboard").await;
    drop(site.daemon);
    drop(site.dir);
}

/// The server decides, not the buttons: a viewer sees no Save and its raw POST is refused; a
/// POST from another site's page is refused even with an operator's cookie; a bad value names
/// its field and writes nothing; a signed-out browser is sent to sign in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_cross_site_posts_and_bad_input_are_refused_by_the_server() {
    let site = Site::start().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = [
        ("node", "pbx1"),
        ("kind", "sip"),
        ("use_remote_auth", "on"),
        ("remote_auth_name", "alice1001"),
        ("remote_auth_password", "Abcdefgh12345"),
    ];
    let post = |cookie: String, extra: Vec<(&'static str, String)>| {
        let mut request = client
            .post(format!("{}/extensions/1002", site.url))
            .header("cookie", cookie)
            .form_pairs(&form);
        for (name, value) in extra {
            request = request.header(name, value);
        }
        request.send()
    };

    let viewer = site.cookie("vera").await;
    let page = client
        .get(format!("{}/extensions/1002", site.url))
        .header("cookie", &viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("type=\"submit\">Save"),
        "no Save for a viewer"
    );
    assert!(html.contains("<fieldset disabled"), "read-only");
    let refused = post(viewer.clone(), vec![]).await.unwrap();
    assert_eq!(refused.status(), 403);
    let reveal = client
        .post(format!("{}/extensions/1002/reveal", site.url))
        .header("cookie", &viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(reveal.status(), 403);

    let operator = site.cookie("otto").await;
    for (header, value) in [
        ("sec-fetch-site", "cross-site".to_string()),
        ("origin", "http://evil.example".to_string()),
    ] {
        let refused = post(operator.clone(), vec![(header, value)]).await.unwrap();
        assert_eq!(refused.status(), 403, "{header}");
        assert!(refused.text().await.unwrap().contains("another site"));
    }
    assert!(
        site.h.db.store.extension_by_number("1002").await.is_err(),
        "nothing written"
    );

    // A password a phone would not take: the field is named, nothing is written.
    let bad = client
        .post(format!("{}/extensions/1002", site.url))
        .header("cookie", &operator)
        .header("origin", &site.url)
        .form_pairs(&[
            ("node", "pbx1"),
            ("use_remote_auth", "on"),
            ("remote_auth_name", "alice1002"),
            ("remote_auth_password", "short"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    let html = bad.text().await.unwrap();
    assert!(
        html.contains("data-error-field=\"remote_auth_password\""),
        "{html}"
    );
    assert!(
        site.h.db.store.extension_by_number("1002").await.is_err(),
        "nothing written"
    );

    // The same form from the console's own page goes through.
    let done = post(operator.clone(), vec![("origin", site.url.clone())])
        .await
        .unwrap();
    assert_eq!(done.status(), 303);
    let row = site.h.db.store.extension_by_number("1002").await.unwrap();
    assert_eq!(row.remote_auth_name.as_deref(), Some("alice1001"));
    assert!(row.use_remote_auth);

    // Rotate, as `extension rotate`: an operator's, not a viewer's; new credentials, audited.
    eventually("1002 provisioned", Duration::from_secs(10), async || {
        let row = site.h.db.store.extension_by_number("1002").await.ok()?;
        (row.state == ExtensionState::Provisioned).then_some(())
    })
    .await;
    let rotate = |cookie: String| {
        client
            .post(format!("{}/extensions/1002/rotate", site.url))
            .header("cookie", cookie)
            .header("origin", &site.url)
            .send()
    };
    assert_eq!(rotate(viewer.clone()).await.unwrap().status(), 403);
    assert_eq!(rotate(operator.clone()).await.unwrap().status(), 303);
    let rotated = site.h.db.store.extension_by_number("1002").await.unwrap();
    assert_ne!(rotated.remote_auth_name, row.remote_auth_name, "a new name");
    assert_ne!(
        rotated
            .remote_auth_password
            .as_ref()
            .map(|p| p.expose_secret().to_string()),
        row.remote_auth_password
            .as_ref()
            .map(|p| p.expose_secret().to_string()),
        "a new password"
    );
    let history = site.h.db.store.audit_of("1002", 10).await.unwrap();
    assert!(
        history
            .iter()
            .any(|e| e.action == "rotate" && e.actor.as_deref() == Some("otto")),
        "{history:?}"
    );

    // Whose the SIP users with its number are: a viewer may ask, names and no password are
    // shown, and the MBG's whole list is read for one page at a time.
    let ask = |cookie: String| {
        client
            .get(format!("{}/extensions/1002/mbg", site.url))
            .header("cookie", cookie)
            .send()
    };
    let asked = ask(viewer.clone()).await.unwrap();
    assert_eq!(asked.status(), 200);
    let html = asked.text().await.unwrap();
    assert!(
        html.contains("ours, recorded against extension 1002"),
        "{html}"
    );
    let password = rotated.remote_auth_password.as_ref().unwrap();
    assert!(!html.contains(password.expose_secret()), "no password");
    site.h.sim.set_faults(mbg_provision::sim::Faults {
        latency_ms: 600,
        ..Default::default()
    });
    let (first, second) = tokio::join!(ask(viewer.clone()), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        ask(operator.clone()).await
    });
    site.h.sim.set_faults(Default::default());
    assert_eq!(first.unwrap().status(), 200);
    let second = second.unwrap();
    assert_eq!(second.status(), 429);
    assert!(
        second
            .text()
            .await
            .unwrap()
            .contains("try again in a moment"),
        "says why"
    );

    // Signed out: the session is gone on the server, and the page asks to sign in again.
    let out = client
        .post(format!("{}/logout", site.url))
        .header("cookie", &operator)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    let after = client
        .get(format!("{}/extensions/1002", site.url))
        .header("cookie", &operator)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 303);
    assert!(
        after.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/login?next=")
    );

    // Every answer carries the security headers.
    let login = client
        .get(format!("{}/login", site.url))
        .send()
        .await
        .unwrap();
    let headers = login.headers();
    assert_eq!(
        headers["content-security-policy"],
        "default-src 'self'; frame-ancestors 'none'; form-action 'self'"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert_eq!(headers["cache-control"], "no-store");
    drop(site.daemon);
}

/// Five wrong passwords lock that name out from that address, the right one included; the
/// other accounts are not locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_failed_sign_ins_lock_the_name_out_from_that_address() {
    let site = Site::start().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let sign_in = async |name: &str, password: &str| {
        client
            .post(format!("{}/login", site.url))
            .form_pairs(&[("username", name), ("password", password)])
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    for _ in 0..5 {
        assert_eq!(sign_in("ada", "wrong wrong wrong").await, 401);
    }
    assert_eq!(sign_in("ada", PASSWORD).await, 429, "locked out");
    assert_eq!(sign_in("otto", PASSWORD).await, 303, "another name is not");
    let metrics = reqwest::get(format!("{}/metrics", site.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"mbg_provision_console_sign_in_refused_total{reason="wrong_password"} 5"#,
        r#"mbg_provision_console_sign_in_refused_total{reason="locked_out"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    let log = site.daemon.log(site.dir.path());
    assert!(
        log.contains("console: sign-in refused, locked out"),
        "logged"
    );
    drop(site.daemon);
}

/// An admin adds a node and changes its NAT settings on the Nodes page; a bad address names
/// its field and adds nothing; an operator's POST is refused; the Audit page shows who did
/// what, filtered by user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_manages_nodes_and_the_audit_page_names_who() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let site = Site::start().await;
    browser.go(&format!("{}/nodes", site.url)).await;
    browser.sign_in("ada", PASSWORD).await;
    assert!(browser.url().await.ends_with("/nodes"));

    browser.type_into("#name", "pbx2").await;
    browser.type_into("#address", "not an address!").await;
    browser.submit("form.new-node button").await;
    assert!(
        browser
            .text("[data-field=error]")
            .await
            .contains("not an IP address or host name"),
        "the field's rule"
    );
    assert_eq!(
        site.h.db.store.nodes().await.unwrap().len(),
        1,
        "nothing added"
    );
    browser.type_into("#name", "pbx2").await;
    browser.type_into("#address", "10.0.0.21").await;
    browser.type_into("#nat_address", "203.0.113.8").await;
    browser.type_into("#nat_sip_port", "5062").await;
    browser.submit("form.new-node button").await;
    let pbx2 = site.h.db.store.node_by_name("pbx2").await.unwrap();
    assert_eq!(pbx2.nat_address.as_deref(), Some("203.0.113.8"));
    assert_eq!(pbx2.nat_sip_port, Some(5062));

    browser
        .type_into("tr[data-node=pbx2] input[name=nat_sip_port]", "5064")
        .await;
    browser.submit("form#node-pbx2 button").await;
    assert_eq!(
        site.h
            .db
            .store
            .node_by_name("pbx2")
            .await
            .unwrap()
            .nat_sip_port,
        Some(5064)
    );
    browser.screenshot("nodes").await;

    let operator = site.cookie("otto").await;
    let refused = reqwest::Client::new()
        .post(format!("{}/nodes", site.url))
        .header("cookie", operator)
        .form_pairs(&[("name", "pbx3"), ("address", "10.0.0.22")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);

    browser.go(&format!("{}/audit?actor=ada", site.url)).await;
    let table = browser.text("table.audit").await;
    assert!(table.contains("node add"), "{table}");
    assert!(table.contains("node set"), "{table}");
    assert!(!table.contains("console user add"), "only ada's: {table}");
    browser.screenshot("audit").await;
    drop(site.daemon);
}

/// The whole token exchange in the browser, on a site that has no token yet: a wrong shared
/// secret and a wrong verifier each say what went wrong on the page; the right ones store the
/// token, and the daemon, which was waiting for it, provisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_exchange_is_done_in_the_browser() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let site = Site::start_with(false).await;
    browser.go(&format!("{}/mbg", site.url)).await;
    browser.sign_in("ada", PASSWORD).await;
    assert!(
        browser
            .text("[data-field=token_state]")
            .await
            .contains("not requested yet"),
        "{}",
        browser.text("[data-field=token_state]").await
    );

    browser
        .type_into("#consumer_id", crate::mbg::CONSUMER)
        .await;
    browser
        .type_into("#consumer_secret", "not-the-secret")
        .await;
    browser.submit("form[action='/mbg/request'] button").await;
    let error = browser.text("[data-field=error]").await;
    assert!(error.contains("401"), "{error}");

    browser
        .type_into("#consumer_id", crate::mbg::CONSUMER)
        .await;
    browser
        .type_into("#consumer_secret", crate::mbg::SECRET)
        .await;
    browser.submit("form[action='/mbg/request'] button").await;
    let temporary = site
        .h
        .db
        .store
        .mbg_settings()
        .await
        .unwrap()
        .temp_token
        .expect("a temporary token stored");
    // The administrator approves it on the MBG's page.
    let verifier = site.h.sim.approve(temporary.expose_secret()).unwrap();
    let wrong = if verifier == "111111" {
        "222222"
    } else {
        "111111"
    };
    browser.type_into("#verifier", wrong).await;
    browser.submit("form[action='/mbg/verify'] button").await;
    assert!(
        browser
            .text("[data-field=error]")
            .await
            .contains("verifier"),
        "{}",
        browser.text("[data-field=error]").await
    );
    browser.type_into("#verifier", &verifier).await;
    browser.submit("form[action='/mbg/verify'] button").await;
    assert!(
        browser
            .text("[data-field=outcome]")
            .await
            .starts_with("Access token stored, valid until"),
        "{}",
        browser.text("body").await
    );
    assert!(
        browser
            .text("[data-field=token_state]")
            .await
            .contains("valid until")
    );
    browser.screenshot("mbg").await;
    let page = browser.text("body").await;
    assert!(
        !page.contains(crate::mbg::SECRET),
        "the shared secret is never shown"
    );

    // The daemon was waiting for a token: an extension switched on now reaches the MBG.
    site.h
        .db
        .store
        .set_extension(
            &mbg_provision::store::ExtensionSpec {
                number: "1001".into(),
                node: "pbx1".into(),
                kind: None,
                use_remote_auth: Some(true),
                sip_password: None,
            },
            &secrecy::SecretString::from("pbx-password-1001"),
        )
        .await
        .unwrap();
    eventually(
        "provisioned with the new token",
        Duration::from_secs(30),
        async || (site.h.sim.devices().len() == 1).then_some(()),
    )
    .await;
    let audit = site
        .h
        .db
        .store
        .audit_page(None, Some("ada"), None, None, 10)
        .await
        .unwrap();
    let actions: Vec<&str> = audit.iter().map(|(_, a)| a.action.as_str()).collect();
    assert_eq!(actions, ["token verify", "token request"]);
    drop(site.daemon);
}

/// The Users page, for admins: add (a short password names its field), change a role, set a
/// password (the account's sessions end), remove; the last admin cannot demote itself; an
/// operator cannot open the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_manages_accounts_and_the_last_admin_stays() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let site = Site::start().await;
    let store = &site.h.db.store;
    browser.go(&format!("{}/users", site.url)).await;
    browser.sign_in("ada", PASSWORD).await;
    assert!(browser.url().await.ends_with("/users"));

    browser.type_into("form.new-user #username", "nina").await;
    browser.type_into("form.new-user #password", "short").await;
    browser.submit("form.new-user button").await;
    assert_eq!(
        browser
            .script("return document.querySelector('[data-field=error]').dataset.errorField;")
            .await,
        "password"
    );
    assert!(
        store.console_user("nina").await.unwrap().is_none(),
        "nothing added"
    );
    browser.type_into("form.new-user #username", "nina").await;
    browser.type_into("form.new-user #password", PASSWORD).await;
    browser.submit("form.new-user button").await;
    assert_eq!(
        store.console_user("nina").await.unwrap().unwrap().role,
        mbg_provision::store::Role::Viewer
    );

    browser
        .script(
            "document.querySelector('tr[data-user=nina] select[name=role]').value = 'operator';",
        )
        .await;
    browser
        .submit("form[action='/users/nina/role'] button")
        .await;
    assert_eq!(
        store.console_user("nina").await.unwrap().unwrap().role,
        mbg_provision::store::Role::Operator
    );

    browser
        .script("document.querySelector('tr[data-user=ada] select[name=role]').value = 'viewer';")
        .await;
    browser
        .submit("form[action='/users/ada/role'] button")
        .await;
    assert!(
        browser
            .text("[data-field=error]")
            .await
            .contains("last admin")
    );
    browser.screenshot("users").await;

    let nina = site.cookie("nina").await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = |cookie: String| {
        client
            .get(format!("{}/extensions", site.url))
            .header("cookie", cookie)
            .send()
    };
    assert_eq!(page(nina.clone()).await.unwrap().status(), 200);
    browser
        .type_into(
            "form[action='/users/nina/password'] input[name=password]",
            "another long password",
        )
        .await;
    browser
        .submit("form[action='/users/nina/password'] button")
        .await;
    eventually("nina's session ended", Duration::from_secs(5), async || {
        (page(nina.clone()).await.unwrap().status() == 303).then_some(())
    })
    .await;

    browser
        .submit("form[action='/users/nina/remove'] button")
        .await;
    assert!(store.console_user("nina").await.unwrap().is_none());

    let operator = site.cookie("otto").await;
    let refused = client
        .get(format!("{}/users", site.url))
        .header("cookie", operator)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let audit = store
        .audit_page(None, Some("ada"), None, None, 20)
        .await
        .unwrap();
    let actions: Vec<&str> = audit.iter().map(|(_, a)| a.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "console user remove",
            "console user passwd",
            "console user role",
            "console user add"
        ]
    );
    drop(site.daemon);
}

/// On an address other than loopback the console is off (it has no TLS yet): its pages answer
/// 404, `/healthz` still answers, and the log says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_off_on_an_address_other_than_loopback() {
    let h = Harness::new(TestDb::sqlite().await, sim_config())
        .await
        .with_token()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let (mut command, port) = Daemon::command(&h, dir.path(), &[], &[]);
    command.env("MBG_PROVISION_HTTP__LISTEN", format!("0.0.0.0:{port}"));
    let daemon = Daemon::spawn(&mut command, port, dir.path());
    daemon.leading_after_a_full_pass().await;
    let login = reqwest::get(format!("http://127.0.0.1:{port}/login"))
        .await
        .unwrap();
    assert_eq!(login.status(), 404);
    assert!(daemon.log(dir.path()).contains("the console is off"));
}

/// Accessibility: axe-core (vendored, `tests/fixtures/axe.min.js`) on every page, as an admin
/// sees it: no serious or critical violation. And the SIP Authorization form works from the
/// keyboard alone: Tab to the box, Space ticks it, Enter on Save submits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_passes_axe_and_the_form_works_from_the_keyboard() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let site = Site::start().await;
    let axe = include_str!("../fixtures/axe.min.js");
    browser.go(&format!("{}/login", site.url)).await;
    let mut pages = vec!["/login".to_string()];
    let check = async |path: &str| {
        browser.script(axe).await;
        let violations = browser
            .call(
                reqwest::Method::POST,
                "/execute/async",
                Some(json!({"script": "const done = arguments[arguments.length - 1]; axe.run(document).then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.target.join(' '))}))));", "args": []})),
            )
            .await;
        let serious: Vec<&Value> = violations
            .as_array()
            .unwrap_or_else(|| panic!("axe ran on {path}: {violations}"))
            .iter()
            .filter(|v| v["impact"] == "serious" || v["impact"] == "critical")
            .collect();
        assert!(serious.is_empty(), "{path}: {serious:#?}");
        violations.as_array().map_or(0, Vec::len)
    };
    let mut minor = check("/login").await;
    browser.sign_in("ada", PASSWORD).await;
    for path in [
        "/",
        "/extensions",
        "/extensions/1001",
        "/extensions/1001/mbg",
        "/nodes",
        "/mbg",
        "/audit",
        "/users",
    ] {
        browser.go(&format!("{}{path}", site.url)).await;
        minor += check(path).await;
        pages.push(path.to_string());
    }
    eprintln!(
        "console: axe on {} pages: 0 serious or critical, {minor} minor or moderate",
        pages.len()
    );

    // The keyboard alone: focus the box, Space ticks it, Tab to Save, Enter submits.
    browser.go(&format!("{}/extensions/1003", site.url)).await;
    let focus = browser.element("#use_remote_auth").await;
    browser
        .call(
            reqwest::Method::POST,
            &format!("/element/{focus}/value"),
            Some(json!({"text": " "})),
        )
        .await;
    assert_eq!(
        browser
            .script("return document.querySelector('#use_remote_auth').checked;")
            .await,
        true,
        "Space ticks the box"
    );
    let save = browser
        .element("form.sip-authorization button[type=submit]")
        .await;
    browser.script("window.beforeSubmit = true;").await;
    browser
        .call(
            reqwest::Method::POST,
            &format!("/element/{save}/value"),
            Some(json!({"text": "\u{E007}"})),
        )
        .await;
    eventually(
        "saved from the keyboard",
        Duration::from_secs(10),
        async || {
            site.h
                .db
                .store
                .extension_by_number("1003")
                .await
                .ok()
                .filter(|e| e.use_remote_auth)
                .map(|_| ())
        },
    )
    .await;
    drop(site.daemon);
}

/// The list and the dashboard follow what the engine does, without a reload: an extension
/// switched on by another writer (SQL, the phone system) shows as provisioned, with the MBG's
/// ID, in its row, and the dashboard's count moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_and_the_dashboard_follow_changes_live() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let site = Site::start().await;
    let store = &site.h.db.store;
    let spec = |number: &str, on: bool| mbg_provision::store::ExtensionSpec {
        number: number.into(),
        node: "pbx1".into(),
        kind: None,
        use_remote_auth: Some(on),
        sip_password: None,
    };
    let password = secrecy::SecretString::from("pbx-password");
    store
        .set_extension(&spec("2001", false), &password)
        .await
        .unwrap();
    store
        .set_extension(&spec("2002", false), &password)
        .await
        .unwrap();
    browser
        .go(&format!("{}/extensions?prefix=200", site.url))
        .await;
    browser.sign_in("vera", PASSWORD).await;
    let state = "tr[data-number='2002'] [data-field=state]";
    assert_eq!(browser.text(state).await, "idle");
    browser.script("window.notReloaded = true;").await;
    store
        .set_extension(&spec("2002", true), &password)
        .await
        .unwrap();
    let started = Instant::now();
    eventually(
        "provisioned in the row",
        Duration::from_secs(10),
        async || (browser.text(state).await == "provisioned").then_some(()),
    )
    .await;
    eprintln!(
        "console: the list showed the change {:?} after the write",
        started.elapsed()
    );
    let guid = store
        .extension_by_number("2002")
        .await
        .unwrap()
        .mbg_device_id
        .unwrap();
    eventually(
        "the MBG's ID in the row",
        Duration::from_secs(2),
        async || {
            (browser
                .text("tr[data-number='2002'] [data-field=mbg_device_id]")
                .await
                == guid)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        browser.script("return window.notReloaded === true;").await,
        true
    );

    browser.go(&format!("{}/", site.url)).await;
    let before = browser.text("[data-field=count_provisioned]").await;
    assert_eq!(before, "1");
    browser.script("window.notReloaded = true;").await;
    store
        .set_extension(&spec("2001", true), &password)
        .await
        .unwrap();
    eventually(
        "the dashboard's count",
        Duration::from_secs(10),
        async || (browser.text("[data-field=count_provisioned]").await == "2").then_some(()),
    )
    .await;
    assert_eq!(
        browser.script("return window.notReloaded === true;").await,
        true
    );
    drop(site.daemon);
}

/// On PostgreSQL both instances serve the console from the same sessions: signed in on the
/// leader, the same cookie works on the standby after the leader is killed; a Save there writes
/// the database, and the standby, now leading, provisions it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "needs TEST_POSTGRES_URL")]
async fn a_session_survives_the_leaders_death_on_postgres() {
    let Some(db) = TestDb::postgres("a_session_survives_the_leaders_death_on_postgres").await
    else {
        return;
    };
    let h = Harness::new(db, sim_config()).await.with_token().await;
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    for args in [
        vec!["node", "add", "pbx1", "--address", "10.0.0.20"],
        vec![
            "console",
            "user",
            "add",
            "otto",
            "--role",
            "admin",
            "--password-file",
            password_file.to_str().unwrap(),
        ],
    ] {
        let output = crate::support::binary()
            .env("MBG_PROVISION_DATABASE__URL", &h.db.url)
            .env("MBG_PROVISION_SECRETS__KEY_FILE", &h.db.key_file)
            .args(&args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let a = Daemon::start(&h, dir.path());
    let b = Daemon::start(&h, dir.path());
    let mut roles = Vec::new();
    crate::service::eventually(
        "one leader, one standby",
        Duration::from_secs(20),
        async || {
            roles = vec![a.role().await, b.role().await];
            roles.contains(&Some("leader".into())) && roles.contains(&Some("standby".into()))
        },
    )
    .await;
    let (leader, standby) = if roles[0].as_deref() == Some("leader") {
        (a, b)
    } else {
        (b, a)
    };
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = client
        .post(format!("http://127.0.0.1:{}/login", leader.port))
        .form_pairs(&[("username", "otto"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();

    leader.signal("-KILL");
    let standby_url = format!("http://127.0.0.1:{}", standby.port);
    let page = client
        .get(format!("{standby_url}/extensions/1001"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "the same session on the other instance");
    assert!(page.text().await.unwrap().contains("otto"));
    let saved = client
        .post(format!("{standby_url}/extensions/1001"))
        .header("cookie", &cookie)
        .header("origin", &standby_url)
        .form_pairs(&[
            ("node", "pbx1"),
            ("use_remote_auth", "on"),
            ("remote_auth_name", "otto1001"),
            ("remote_auth_password", "Abcdefgh12345"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(saved.status(), 303);
    eventually(
        "provisioned by the new leader",
        Duration::from_secs(30),
        async || {
            h.db.store
                .extension_by_number("1001")
                .await
                .ok()
                .and_then(|e| e.mbg_device_id)
        },
    )
    .await;
    assert_eq!(standby.role().await.as_deref(), Some("leader"));
    let devices = h.sim.devices();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].setside_username, "otto1001");
}

/// With `http.tls_cert` and `http.tls_key`, `http.listen` speaks TLS (`/healthz` too), the
/// console may listen beyond loopback, its session cookie is `__Host-` and `Secure`, answers
/// carry HSTS, plain HTTP gets nothing, and `preflight` reads the daemon's health over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_console_listens_beyond_loopback_with_secure_cookies() {
    let h = Harness::new(TestDb::sqlite().await, sim_config())
        .await
        .with_token()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::preflight::TestCa::new();
    let (chain, key) = ca.leaf(&["127.0.0.1", "localhost"], false);
    let pem = |der: &[u8]| {
        let text = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = text
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        )
    };
    let cert_file = dir.path().join("console.pem");
    std::fs::write(&cert_file, format!("{}{}", pem(&chain[0]), ca.pem)).unwrap();
    let key_file = dir.path().join("console.key");
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let output = crate::support::binary()
        .env("MBG_PROVISION_DATABASE__URL", &h.db.url)
        .args([
            "console",
            "user",
            "add",
            "otto",
            "--role",
            "admin",
            "--password-file",
        ])
        .arg(&password_file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let tls_env = [
        (
            "MBG_PROVISION_HTTP__TLS_CERT",
            cert_file.to_str().unwrap().to_string(),
        ),
        (
            "MBG_PROVISION_HTTP__TLS_KEY",
            key_file.to_str().unwrap().to_string(),
        ),
    ];
    let (mut command, port) = Daemon::command(&h, dir.path(), &[], &[]);
    command.env("MBG_PROVISION_HTTP__LISTEN", format!("0.0.0.0:{port}"));
    command.envs(tls_env.iter().map(|(k, v)| (*k, v.as_str())));
    let daemon = Daemon::spawn(&mut command, port, dir.path());
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tls_certs_merge(reqwest::Certificate::from_pem_bundle(ca.pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}");
    eventually("healthz over TLS", Duration::from_secs(20), async || {
        let answer = client.get(format!("{url}/healthz")).send().await.ok()?;
        (answer.status() == 200).then_some(())
    })
    .await;

    let signed_in = client
        .post(format!("{url}/login"))
        .form_pairs(&[("username", "otto"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(cookie.starts_with("__Host-mbgp_session="), "{cookie}");
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert_eq!(
        signed_in.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let page = client
        .get(format!("{url}/extensions"))
        .header("cookie", session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);

    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "no answer over plain HTTP"
    );

    let mut env: Vec<(&str, &str)> = tls_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let listen = format!("127.0.0.1:{port}");
    env.push(("MBG_PROVISION_HTTP__LISTEN", &listen));
    let base_url = h.sim.base_url();
    env.push(("MBG_PROVISION_MBG__BASE_URL", &base_url));
    let key_path = h.db.key_file.to_str().unwrap().to_string();
    env.push(("MBG_PROVISION_SECRETS__KEY_FILE", &key_path));
    let preflight = crate::cli::run_with(dir.path(), &h.db.url, &env, &["preflight", "--json"]);
    let report: Value = serde_json::from_slice(&preflight.stdout).unwrap();
    let check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "daemon")
        .unwrap()
        .clone();
    assert_eq!(check["status"], "pass", "{check:#}");
    drop(daemon);
}

/// The Nodes page and the SIP Authorization form show the ICP each node's address matches,
/// from the list the leader recorded (so a standby, which never asks the MBG, shows it too);
/// a node no ICP matches is flagged with the MBG's ICPs to choose from. The dashboard shows
/// the licence budget, the next scheduled renewal and the last one. A SIGHUP's new credential
/// rules reach the console without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_show_their_icp_the_dashboard_its_figures_and_a_sighup_reaches_the_console() {
    let site = Site::configured(
        true,
        Some("[credentials]\nname_length = 12\n[mbg]\nteleworker_licences = 10\n"),
    )
    .await;
    let cli = |args: &[&str]| {
        let output = crate::support::binary()
            .env("MBG_PROVISION_DATABASE__URL", &site.h.db.url)
            .env("MBG_PROVISION_SECRETS__KEY_FILE", &site.h.db.key_file)
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    cli(&["node", "add", "pbx9", "--address", "10.9.9.9"]);
    cli(&["extension", "set", "1001", "--node", "pbx1"]);
    let viewer = site.cookie("vera").await;

    let nodes = site.page(&viewer, "/nodes").await;
    let row = |name: &str| {
        let start = nodes
            .find(&format!("data-node=\"{name}\""))
            .unwrap_or_else(|| panic!("{name} in {nodes}"));
        let end = nodes[start..].find("</tr>").unwrap() + start;
        nodes[start..end].to_string()
    };
    assert!(
        row("pbx1").contains(r#"<span data-field="icp">MiVO250-1</span>"#),
        "pbx1 matches the ICP at 10.0.0.20: {}",
        row("pbx1")
    );
    let unmatched = row("pbx9");
    assert!(
        unmatched.contains("no ICP on the MBG has this address"),
        "{unmatched}"
    );
    for listed in ["MiVO250-1", "10.0.0.20", "MiVO250-2", "10.0.0.21"] {
        assert!(
            unmatched.contains(listed),
            "the MBG's ICPs are offered: {unmatched}"
        );
    }
    let form = site.page(&viewer, "/extensions/1001").await;
    assert!(
        form.contains(r#"<span data-field="icp">MiVO250-1</span>"#),
        "the form shows the extension's ICP"
    );

    let field = |html: &str, name: &str| {
        let at = html
            .find(&format!("data-field=\"{name}\">"))
            .unwrap_or_else(|| panic!("{name} in {html}"));
        let text = &html[at..];
        let start = text.find('>').unwrap() + 1;
        text[start..start + text[start..].find("</dd>").unwrap()].to_string()
    };
    let dashboard = site.page(&viewer, "/").await;
    assert!(
        field(&dashboard, "licences").starts_with("0 of 10 used"),
        "{dashboard}"
    );
    assert!(
        field(&dashboard, "next_renewal").contains("UTC"),
        "{dashboard}"
    );
    assert_eq!(field(&dashboard, "last_renewal"), "none yet");
    let admin = site.cookie("ada").await;
    let renewed = reqwest::Client::new()
        .post(format!("{}/mbg/renew", site.url))
        .header("cookie", &admin)
        .header("origin", &site.url)
        .send()
        .await
        .unwrap();
    assert_eq!(renewed.status(), 200);
    let dashboard = site.page(&viewer, "/").await;
    assert!(
        field(&dashboard, "last_renewal").contains("token renew, ok"),
        "{dashboard}"
    );

    // Run preflight: each check with its result, and the firewall checklist for every client.
    let checked = reqwest::Client::new()
        .post(format!("{}/mbg/preflight", site.url))
        .header("cookie", &admin)
        .header("origin", &site.url)
        .send()
        .await
        .unwrap();
    assert_eq!(checked.status(), 200);
    let html = checked.text().await.unwrap();
    for expected in [
        r#"data-check="database""#,
        r#"data-check="nodes and ICPs""#,
        r#"data-field="firewall""#,
        "Port Forwarding",
        "69xx",
        "5060",
    ] {
        assert!(html.contains(expected), "{expected} in {html}");
    }

    // One number on two nodes (another program can write that): the form asks which, the
    // list links each row with its node, and the live rows keep them apart.
    crate::service::sql(
        &site.h.db.url,
        "INSERT INTO extensions (node_id, number, kind, sip_password, use_remote_auth, updated_at)
         SELECT id, '1001', 'sip_hot_desk', 'pw', 0, 0 FROM nodes WHERE name = 'pbx9'",
    )
    .await;
    let which = reqwest::Client::new()
        .get(format!("{}/extensions/1001", site.url))
        .header("cookie", &viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(which.status(), 409);
    let text = which.text().await.unwrap();
    assert!(text.contains("exists on nodes pbx1, pbx9"), "{text}");
    let on_pbx9 = site.page(&viewer, "/extensions/1001?node=pbx9").await;
    assert!(
        on_pbx9.contains(r#"<option value="sip_hot_desk" selected>"#),
        "the pbx9 row"
    );
    assert!(
        on_pbx9.contains("/extensions/1001/live?node=pbx9"),
        "follows that row"
    );
    let list = site.page(&viewer, "/extensions?prefix=1001").await;
    for link in ["/extensions/1001?node=pbx1", "/extensions/1001?node=pbx9"] {
        assert!(list.contains(link), "{link} in {list}");
    }
    let live: Value = reqwest::Client::new()
        .get(format!("{}/extensions/live?numbers=1001", site.url))
        .header("cookie", &viewer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        live.get("1001@pbx1").is_some() && live.get("1001@pbx9").is_some(),
        "{live}"
    );

    // New candidates follow the configuration the daemon runs now.
    let candidate = |html: &str| {
        let at = html.find(r#"id="remote_auth_name""#).unwrap();
        let value = &html[at..];
        let start = value.find("value=\"").unwrap() + 7;
        let end = value[start..].find('"').unwrap() + start;
        value[start..end].to_string()
    };
    let before = candidate(&site.page(&viewer, "/extensions/2001").await);
    assert_eq!(before.len(), 12, "{before}");
    std::fs::write(
        site.dir.path().join("config.toml"),
        "[credentials]\nname_length = 20\n",
    )
    .unwrap();
    site.daemon.signal("-HUP");
    eventually(
        "the console draws 20-character names",
        Duration::from_secs(10),
        async || {
            (candidate(&site.page(&viewer, "/extensions/2001").await).len() == 20).then_some(())
        },
    )
    .await;
}

/// Behind a declared TLS proxy: a request the proxy says it received in plain HTTP, or one
/// that reached the listener from elsewhere without the proxy, carries the red warning; and a
/// lock-out is keyed on the address the proxy saw (its last `X-Forwarded-For` entry), not on
/// the proxy's own address, so one client's failures do not lock out everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_tls_proxy_plain_http_is_flagged_and_clients_are_told_apart() {
    let site = Site::configured(true, Some("[http]\nbehind_tls_proxy = true\n")).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login_page = async |proto: &str| {
        client
            .get(format!("{}/login", site.url))
            .header("x-forwarded-for", "198.51.100.1")
            .header("x-forwarded-proto", proto)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    const BANNER: &str = r#"data-field="in_clear""#;
    assert!(
        login_page("http").await.contains(BANNER),
        "plain HTTP at the proxy is flagged"
    );
    assert!(
        !login_page("https").await.contains(BANNER),
        "TLS at the proxy is not"
    );

    let sign_in = async |forwarded_for: &str, password: &str| {
        client
            .post(format!("{}/login", site.url))
            .header("x-forwarded-for", forwarded_for)
            .header("x-forwarded-proto", "https")
            .form_pairs(&[("username", "ada"), ("password", password)])
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    for _ in 0..5 {
        // What the client wrote first is not what the proxy saw: the last entry counts.
        assert_eq!(
            sign_in("10.1.1.1, 198.51.100.1", "wrong wrong wrong").await,
            401
        );
    }
    assert_eq!(
        sign_in("10.1.1.2, 198.51.100.1", PASSWORD).await,
        429,
        "locked out from 198.51.100.1"
    );
    assert_eq!(
        sign_in("198.51.100.2", PASSWORD).await,
        303,
        "another client is not"
    );
    let log = site.daemon.log(site.dir.path());
    assert!(
        log.contains("198.51.100.1"),
        "the lock-out names the client the proxy saw"
    );
}

/// The console is closed until an admin account exists: the sign-in page says how to add one,
/// and a viewer made first cannot sign in by posting the form directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_stays_closed_until_an_admin_exists() {
    let h = Harness::new(TestDb::sqlite().await, sim_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let add = |name: &str, role: &str| {
        let output = crate::support::binary()
            .env("MBG_PROVISION_DATABASE__URL", &h.db.url)
            .args([
                "console",
                "user",
                "add",
                name,
                "--role",
                role,
                "--password-file",
            ])
            .arg(&password_file)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    add("vera", "viewer");
    let daemon = Daemon::start(&h, dir.path());
    let url = format!("http://127.0.0.1:{}", daemon.port);
    crate::service::eventually("the daemon answers", Duration::from_secs(20), async || {
        daemon.health().await.is_some()
    })
    .await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = client.get(format!("{url}/login")).send().await.unwrap();
    assert_eq!(page.status(), 503);
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("console user add NAME --role admin")
    );
    let posted = client
        .post(format!("{url}/login"))
        .form_pairs(&[("username", "vera"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(
        posted.status(),
        503,
        "no sign-in while the console is closed"
    );
    assert!(posted.headers().get("set-cookie").is_none());

    add("ada", "admin");
    let page = client.get(format!("{url}/login")).send().await.unwrap();
    assert_eq!(page.status(), 200, "open once an admin exists");
    let posted = client
        .post(format!("{url}/login"))
        .form_pairs(&[("username", "vera"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 303, "and the viewer signs in");
}
