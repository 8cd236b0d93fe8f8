//! The page at `/` in a real browser: headless Chromium, driven through chromedriver (W3C
//! WebDriver, Debian's `chromium` and `chromium-driver`, which scripts/deps.sh installs), uploads
//! a validation image through the real stack, waits for the answer, checks the top class, the
//! model and the timings shown, saves a screenshot, then checks an error's code is shown and that
//! the page fits a phone-width window. Without Chromium it is skipped with a loud message.
//!
//! The screenshot goes to `CLOTHESLINE_UI_SCREENSHOT` (default `target/ui-test.png`); the README's
//! `examples/ui.png` is one of them.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clothesline_tests::stack::{Stack, StackOptions};
use clothesline_tests::{free_port, paths, wait_until};
use fantoccini::{Client, ClientBuilder, Locator};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const WAIT: Duration = Duration::from_secs(60);

/// chromedriver on a free port; killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    async fn start() -> Self {
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let driver = Self { child, port };
        let status = format!("http://127.0.0.1:{port}/status");
        let http = reqwest::Client::new();
        wait_until("chromedriver to be ready", WAIT, || {
            let (http, status) = (http.clone(), status.clone());
            async move {
                let body: serde_json::Value =
                    http.get(&status).send().await.ok()?.json().await.ok()?;
                body["value"]["ready"].as_bool().filter(|r| *r)
            }
        })
        .await;
        driver
    }

    async fn browser(&self, width: u32, height: u32) -> Client {
        let caps = serde_json::json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--hide-scrollbars", format!("--window-size={width},{height}")],
            }
        });
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.as_object().unwrap().clone())
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium_is_there() -> bool {
    let there =
        std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists();
    if !there {
        eprintln!(
            "\n{0}\n!!! SKIPPED: the web page's browser test needs {CHROMIUM} and {CHROMEDRIVER}\n\
             !!! (Debian's chromium and chromium-driver; scripts/deps.sh installs them).\n{0}\n",
            "!".repeat(78)
        );
    }
    there
}

/// The text of the first element `css` finds, waiting for it.
async fn text_of(browser: &Client, css: &str) -> String {
    let el = browser
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} never appeared: {e}"));
    el.text().await.unwrap()
}

fn screenshot_path() -> PathBuf {
    std::env::var_os("CLOTHESLINE_UI_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| paths::repo_root().join("target/ui-test.png"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_classifies_an_uploaded_photo_and_shows_errors() {
    if !chromium_is_there() {
        return;
    }
    let stack = Stack::start(StackOptions::default()).await;
    let driver = Driver::start().await;
    let browser = driver.browser(760, 920).await;
    browser.goto(&stack.ingress.url("/")).await.unwrap();
    assert_eq!(
        browser.title().await.unwrap(),
        "clothesline: classify clothes"
    );

    // Choose a validation photo of pants in the file input, as a person would.
    let dir = paths::dataset().join("validation/pants");
    let mut photos: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (is ../shared there?)", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    photos.sort();
    let input = browser.find(Locator::Id("file")).await.unwrap();
    // Chromium takes only a canonical path (the default dataset is `<repo>/../shared/...`).
    let photo = photos[0].canonicalize().unwrap();
    input.send_keys(&photo.display().to_string()).await.unwrap();

    let first = browser
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#status .top li"))
        .await
        .unwrap();
    assert_eq!(
        first.attr("data-label").await.unwrap().as_deref(),
        Some("pants")
    );
    assert!(first.text().await.unwrap().starts_with("pants"));
    let manifest = protocol::Manifest::load(paths::manifest()).unwrap();
    let model = text_of(&browser, "#model").await;
    assert!(
        model.contains(&format!("{} {}", manifest.name, manifest.version)),
        "{model}"
    );
    let bars = browser
        .find_all(Locator::Css("#status .top li"))
        .await
        .unwrap();
    assert_eq!(bars.len(), 5, "the page asks for the top 5");
    let legend = text_of(&browser, "#status .legend").await;
    for tier in ["request queue", "preprocess", "tensor queue", "inference"] {
        assert!(legend.contains(tier), "timing of {tier}: {legend}");
    }
    let live = browser.find(Locator::Id("status")).await.unwrap();
    assert_eq!(
        live.attr("aria-live").await.unwrap().as_deref(),
        Some("polite")
    );

    let png = browser.screenshot().await.unwrap();
    let path = screenshot_path();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {}", path.display());

    // A URL the preprocessor refuses: the page shows the error's code and message.
    let url = browser.find(Locator::Id("url")).await.unwrap();
    url.send_keys("ftp://example.org/hat.jpg").await.unwrap();
    // type=url accepts ftp:, so the form submits; the API refuses the scheme.
    browser
        .find(Locator::Css("#url-form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let error = text_of(&browser, "#status .error").await;
    assert!(error.starts_with("invalid_url: "), "{error}");

    // Phone width: nothing wider than the screen.
    browser.set_window_size(390, 844).await.unwrap();
    let fits = browser
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        fits,
        serde_json::json!(true),
        "the page scrolls sideways at 390 px"
    );
    browser.close().await.unwrap();
}
