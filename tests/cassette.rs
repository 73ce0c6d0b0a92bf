//! Cassettes (`palisade::testing::cassette`): record against a local server, replay without
//! it through palisade's whole pipeline; a browser's HAR; secrets never written; malformed
//! cassettes refused with their place named; atomic writes; the no-match error.

mod support;

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade::testing::cassette::{
    AfterLast, Cassette, CassetteErrorKind, CassetteTransport, Mode, NoMatch,
};
use palisade::{Client, ErrorKind, ResponseExt};
use serde_json::Value;
use support::{exact, ms, net};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A fresh directory for one test's cassettes.
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("palisade-cassette-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A palisade client over `transport`, with exact short retries.
fn over<S>(transport: S) -> Client
where
    S: tower::Service<reqwest::Request, Response = reqwest::Response>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<palisade::Error>,
    S::Future: Send + 'static,
{
    Client::builder()
        .transport(transport)
        .retry(exact(ms(1), ms(5)).max_attempts(3))
        .build()
        .unwrap()
}

fn recorder(path: &Path) -> CassetteTransport<reqwest::Client> {
    Cassette::new(path)
        .mode(Mode::Record)
        .build(reqwest::Client::new())
        .unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).expect("complete JSON")
}

fn entries(path: &Path) -> Vec<Value> {
    read_json(path)["log"]["entries"]
        .as_array()
        .unwrap()
        .clone()
}

/// Every error of the chain's `Display`, joined.
fn chain(err: &palisade::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(" | ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

const BINARY: &[u8] = &[0, 159, 146, 150, 255, 0xc3, 0x28, 1, 2, 3];

#[tokio::test]
async fn recorded_exchanges_replay_with_their_statuses_headers_and_bodies_in_order() {
    let d = dir("roundtrip");
    let cassette = d.join("roundtrip.har");
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/text"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "text/plain; charset=utf-8")
                .insert_header("x-custom", "kept")
                .set_body_string("héllo, world"),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/bin"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "application/octet-stream")
                .set_body_bytes(BINARY),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/counter"))
        .respond_with(ResponseTemplate::new(200).set_body_string("first"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/counter"))
        .respond_with(ResponseTemplate::new(404).set_body_string("second"))
        .with_priority(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/items"))
        .respond_with(ResponseTemplate::new(201).set_body_string("{\"id\":7}"))
        .mount(&server)
        .await;

    let base = server.uri();
    let urls = [
        format!("{base}/text?lang=fr"),
        format!("{base}/bin"),
        format!("{base}/counter"),
        format!("{base}/counter"),
    ];

    // Record: the caller gets the real response, the same in every way.
    let c = over(recorder(&cassette));
    let mut live = Vec::new();
    for url in &urls {
        let resp = c.get(url).send().await.unwrap();
        assert_eq!(resp.url().as_str(), url, "the URL reqwest gave");
        assert_eq!(resp.version(), reqwest::Version::HTTP_11);
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.unwrap();
        live.push((status, headers, body));
    }
    let post = c
        .post(format!("{base}/items"))
        .body("{\"name\":\"lamp\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 201);
    assert_eq!(live[0].2, "héllo, world");
    assert_eq!(live[1].2, BINARY);
    assert_eq!(live[2].2, "first");
    assert_eq!(live[3].0, 404);
    drop(server);

    // The file: five entries, text and base64 bodies, timings.
    let e = entries(&cassette);
    assert_eq!(e.len(), 5);
    assert_eq!(e[0]["response"]["content"]["text"], "héllo, world");
    assert!(e[0]["response"]["content"].get("encoding").is_none());
    assert_eq!(e[1]["response"]["content"]["encoding"], "base64");
    assert_eq!(e[4]["request"]["postData"]["text"], "{\"name\":\"lamp\"}");
    for entry in &e {
        assert!(entry["startedDateTime"].as_str().unwrap().ends_with('Z'));
        assert!(entry["time"].as_f64().unwrap() >= 0.0);
        assert!(entry["timings"]["wait"].as_f64().unwrap() >= 0.0);
        assert!(entry["timings"]["receive"].as_f64().unwrap() >= 0.0);
    }
    assert_eq!(read_json(&cassette)["log"]["version"], "1.2");

    // Replay, the server gone, with a fresh client.
    let replay = Cassette::new(&cassette).build_replay().unwrap();
    let c = over(replay.clone());
    for (url, (status, headers, body)) in urls.iter().zip(&live) {
        let resp = c.get(url).send().await.unwrap();
        assert_eq!(resp.status(), *status, "{url}");
        assert_eq!(resp.url().as_str(), url);
        for (name, value) in headers {
            assert_eq!(resp.headers().get(name), Some(value), "{url}: {name}");
        }
        assert_eq!(resp.bytes().await.unwrap(), body, "{url}");
    }
    let post = c
        .post(format!("{base}/items"))
        .body("anything: bodies are not matched by default")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 201);
    assert_eq!(post.text().await.unwrap(), "{\"id\":7}");
    assert!(replay.unused().is_empty(), "{:?}", replay.unused());
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test]
async fn a_retried_503_then_200_replays_as_such_through_palisades_retry() {
    let d = dir("retry");
    let cassette = d.join("retry.har");
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .with_priority(2)
        .mount(&server)
        .await;
    let url = format!("{}/flaky", server.uri());

    let resp = over(recorder(&cassette)).get(&url).send().await.unwrap();
    assert_eq!((resp.status().as_u16(), resp.attempts()), (200, 2));
    drop(server);
    let statuses: Vec<u64> = entries(&cassette)
        .iter()
        .map(|e| e["response"]["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [503, 200]);

    let replay = Cassette::new(&cassette).build_replay().unwrap();
    let resp = over(replay.clone()).get(&url).send().await.unwrap();
    assert_eq!((resp.status().as_u16(), resp.attempts()), (200, 2));
    assert_eq!(resp.text().await.unwrap(), "ok");
    assert!(replay.unused().is_empty());
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test]
async fn a_browsers_har_replays() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/browser.har");
    let before = std::fs::read(&fixture).unwrap();
    let replay = Cassette::new(&fixture).match_body().build_replay().unwrap();
    assert_eq!(replay.len(), 5);
    let c = Client::builder()
        .transport(replay.clone())
        .no_retry()
        .build()
        .unwrap();

    // The recorded access token was scrubbed as the HAR was read: any token matches.
    let resp = c
        .get("https://shop.example.com/api/products?access_token=mine&page=1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.headers()["x-request-id"], "req-1");
    // The browser wrote the body decoded: it replays without its Content-Encoding.
    assert!(resp.headers().get("content-encoding").is_none());
    assert!(resp.headers().get("content-length").is_none());
    assert_eq!(
        resp.text().await.unwrap(),
        r#"[{"id":1,"name":"Lamp"},{"id":2,"name":"Chair"}]"#
    );

    let logo = c
        .get("https://shop.example.com/img/logo.png")
        .send()
        .await
        .unwrap();
    assert_eq!(logo.headers()["content-type"], "image/png");
    assert_eq!(
        logo.bytes().await.unwrap(),
        &b"\x89PNG\r\n\x1a\n\x00\x00\x00\r"[..]
    );

    let wrong_body = c
        .post("https://shop.example.com/api/cart")
        .body("{\"id\":3}")
        .send()
        .await
        .unwrap_err();
    assert_eq!(wrong_body.kind(), ErrorKind::Request);
    assert!(
        chain(&wrong_body).contains("differs in the body"),
        "{}",
        chain(&wrong_body)
    );
    let cart = c
        .post("https://shop.example.com/api/cart")
        .body("{\"id\":2}")
        .send()
        .await
        .unwrap();
    assert_eq!(cart.status(), 201);
    assert_eq!(cart.headers()["location"], "/api/cart/17");

    let page2 = c
        .get("https://shop.example.com/api/products?page=2&access_token=x")
        .send()
        .await
        .unwrap();
    assert_eq!(page2.text().await.unwrap(), "[]");

    // Status 0 (blocked by the browser): a transport error.
    let blocked = c
        .get("https://tracker.example.net/collect?v=1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(blocked.kind(), ErrorKind::Transport);
    assert!(
        chain(&blocked).contains("net::ERR_BLOCKED_BY_CLIENT"),
        "{}",
        chain(&blocked)
    );

    assert!(replay.unused().is_empty(), "{:?}", replay.unused());
    assert_eq!(
        std::fs::read(&fixture).unwrap(),
        before,
        "replay never writes"
    );
}

const SECRETS: &[&str] = &[
    "bearerSecretValue",
    "cookieSecretValue",
    "proxyPassSecret",
    "apiKeyHeaderSecret",
    "queryTokenSecret",
    "querySignatureSecret",
    "tenantSecretValue",
    "userinfoUser",
    "userinfoPassword",
    "requestBodyPassword",
    "responseRefreshToken",
    "setCookieSecret",
    "codeSecretValue",
];

#[tokio::test]
async fn no_scrubbed_secret_reaches_the_cassette_file() {
    let d = dir("secrets");
    let cassette = d.join("secrets.har");
    let server = MockServer::start().await;
    // Echoes the credentials it got, in a header and in the body: step 4 finds them there.
    Mock::given(method("POST"))
        .respond_with(|req: &wiremock::Request| {
            let auth = req
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            ResponseTemplate::new(200)
                .insert_header("set-cookie", "sid=setCookieSecret; Path=/; HttpOnly")
                .insert_header("x-echo", format!("you sent {auth}").as_str())
                .insert_header("location", "/next?code=codeSecretValue&step=2")
                .insert_header("content-type", "application/json")
                .set_body_string(format!(
                    "{{\"refresh_token\":\"responseRefreshToken\",\"seen\":\"{auth}\"}}"
                ))
        })
        .mount(&server)
        .await;
    let addr = server.address();
    let url = format!(
        "http://userinfoUser:userinfoPassword@{addr}/login?page=2&token=queryTokenSecret\
         &X-Amz-Signature=querySignatureSecret&my_tenant=tenantSecretValue"
    );
    let transport = Cassette::new(&cassette)
        .mode(Mode::Record)
        .scrub_header("X-Api-Key")
        .scrub_query("tenant")
        .scrub_request_body(|body, headers| {
            assert_eq!(headers["content-type"], "application/json");
            let s = String::from_utf8_lossy(body).replace("requestBodyPassword", "REDACTED");
            *body = s.into_bytes();
        })
        .scrub_response_body(|body, _| {
            let s = String::from_utf8_lossy(body).replace("responseRefreshToken", "REDACTED");
            *body = s.into_bytes();
        })
        .build(reqwest::Client::new())
        .unwrap();
    let resp = over(transport)
        .post(&url)
        .header("authorization", "Bearer bearerSecretValue")
        .header("cookie", "sid=cookieSecretValue; theme=dark")
        .header("proxy-authorization", "Basic cHJveHk6cHJveHlQYXNzU2VjcmV0")
        .header("x-api-key", "apiKeyHeaderSecret")
        .header("content-type", "application/json")
        .body("{\"user\":\"bob\",\"password\":\"requestBodyPassword\"}")
        .send()
        .await
        .unwrap();
    // The caller gets the body as the server sent it.
    let body = resp.text().await.unwrap();
    assert!(body.contains("responseRefreshToken"), "{body}");

    let file = String::from_utf8(std::fs::read(&cassette).unwrap()).unwrap();
    for s in SECRETS {
        assert!(!file.contains(s), "{s} leaked into the cassette:\n{file}");
    }
    // What is no secret stays, and the headers are there with their values redacted.
    let e = &entries(&cassette)[0];
    let url = e["request"]["url"].as_str().unwrap();
    assert!(
        url.contains("page=2") && url.contains("token=REDACTED"),
        "{url}"
    );
    assert!(url.contains("my_tenant=REDACTED"), "{url}");
    let header = |side: &str, name: &str| -> Vec<String> {
        e[side]["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["name"] == name)
            .map(|h| h["value"].as_str().unwrap().to_owned())
            .collect()
    };
    // (Two `Authorization`s: reqwest turned the userinfo into a Basic one.)
    for name in [
        "authorization",
        "cookie",
        "proxy-authorization",
        "x-api-key",
    ] {
        let values = header("request", name);
        assert!(
            !values.is_empty() && values.iter().all(|v| v == "REDACTED"),
            "{name}: {values:?}"
        );
    }
    assert_eq!(header("response", "set-cookie"), ["REDACTED"]);
    // The echo of the first `Authorization` (reqwest's Basic from the userinfo, or the Bearer).
    let echo = header("response", "x-echo");
    assert!(
        echo.len() == 1 && echo[0].ends_with(" REDACTED"),
        "{echo:?}"
    );
    assert_eq!(
        header("response", "location"),
        ["/next?code=REDACTED&step=2"]
    );
    assert!(file.contains("\\\"user\\\":\\\"bob\\\""), "{file}");
    let _ = std::fs::remove_dir_all(&d);
}

/// A cassette of one entry with `f` applied to it, as a file.
fn malformed(d: &Path, name: &str, f: impl FnOnce(&mut Value)) -> PathBuf {
    let mut doc = serde_json::json!({"log": {"version": "1.2", "entries": [
        {
            "request": {"method": "GET", "url": "http://h.test/a", "headers": []},
            "response": {"status": 200, "headers": [], "content": {"size": 2, "text": "ok"}}
        },
        {
            "request": {"method": "GET", "url": "http://h.test/b", "headers": []},
            "response": {"status": 200, "headers": [{"name": "x", "value": "1"}],
                         "content": {"size": 4, "text": "AAEC", "encoding": "base64"}}
        }
    ]}});
    f(&mut doc);
    let p = d.join(format!("{name}.har"));
    std::fs::write(&p, serde_json::to_vec(&doc).unwrap()).unwrap();
    p
}

fn refused(p: &Path) -> palisade::testing::CassetteError {
    Cassette::new(p).build_replay().unwrap_err()
}

#[test]
fn malformed_cassettes_are_refused_with_the_place_named() {
    let d = dir("malformed");
    /// A name, what breaks the cassette, the place named, words of the message.
    type Case = (
        &'static str,
        Box<dyn FnOnce(&mut Value)>,
        &'static str,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "wrong_type",
            Box::new(|v| v["log"]["entries"][1]["response"]["status"] = "200".into()),
            "log.entries[1].response.status",
            "expected an integer status, found a string",
        ),
        (
            "missing",
            Box::new(|v| {
                v["log"]["entries"][1]["request"]
                    .as_object_mut()
                    .unwrap()
                    .remove("url");
            }),
            "log.entries[1].request.url",
            "missing",
        ),
        (
            "no_entries",
            Box::new(|v| {
                v["log"].as_object_mut().unwrap().remove("entries");
            }),
            "log.entries",
            "missing",
        ),
        (
            "log_not_object",
            Box::new(|v| v["log"] = serde_json::json!([])),
            "log",
            "expected an object, found an array",
        ),
        (
            "status_high",
            Box::new(|v| v["log"]["entries"][0]["response"]["status"] = 1000.into()),
            "log.entries[0].response.status",
            "1000 is not an HTTP status",
        ),
        (
            "status_low",
            Box::new(|v| v["log"]["entries"][0]["response"]["status"] = 42.into()),
            "log.entries[0].response.status",
            "42 is not an HTTP status",
        ),
        (
            "status_negative",
            Box::new(|v| v["log"]["entries"][0]["response"]["status"] = (-1).into()),
            "log.entries[0].response.status",
            "expected an integer status, found a number",
        ),
        (
            "bad_base64",
            Box::new(|v| {
                v["log"]["entries"][1]["response"]["content"]["text"] = "not base64!".into()
            }),
            "log.entries[1].response.content.text",
            "invalid base64",
        ),
        (
            "bad_encoding",
            Box::new(|v| {
                v["log"]["entries"][1]["response"]["content"]["encoding"] = "rot13".into()
            }),
            "log.entries[1].response.content.encoding",
            "unknown encoding",
        ),
        (
            "bad_header_name",
            Box::new(|v| {
                v["log"]["entries"][1]["response"]["headers"][0]["name"] = "bad name".into()
            }),
            "log.entries[1].response.headers[0].name",
            "\"bad name\" is not a valid header name",
        ),
        (
            "bad_header_value",
            Box::new(|v| {
                v["log"]["entries"][1]["response"]["headers"][0]["value"] =
                    "secretHeaderValue\r\nx: y".into()
            }),
            "log.entries[1].response.headers[0].value",
            "not a valid header value",
        ),
        (
            "header_not_object",
            Box::new(|v| v["log"]["entries"][1]["response"]["headers"][0] = 7.into()),
            "log.entries[1].response.headers[0]",
            "expected an object, found a number",
        ),
        (
            "bad_method",
            Box::new(|v| v["log"]["entries"][0]["request"]["method"] = "GE T".into()),
            "log.entries[0].request.method",
            "not an HTTP method",
        ),
        (
            "relative_url",
            Box::new(|v| v["log"]["entries"][0]["request"]["url"] = "/a".into()),
            "log.entries[0].request.url",
            "not an absolute URL",
        ),
        (
            "no_content",
            Box::new(|v| {
                v["log"]["entries"][0]["response"]
                    .as_object_mut()
                    .unwrap()
                    .remove("content");
            }),
            "log.entries[0].response.content",
            "missing",
        ),
        (
            "entry_not_object",
            Box::new(|v| v["log"]["entries"][1] = "entry".into()),
            "log.entries[1]",
            "expected an object, found a string",
        ),
        (
            "timings_wrong",
            Box::new(|v| v["log"]["entries"][0]["timings"] = serde_json::json!({"wait": "1"})),
            "log.entries[0].timings.wait",
            "expected a number, found a string",
        ),
    ];
    for (name, f, place, message) in cases {
        let p = malformed(&d, name, f);
        let e = refused(&p);
        assert_eq!(e.kind(), CassetteErrorKind::Malformed, "{name}: {e}");
        assert_eq!(e.place(), Some(place), "{name}: {e}");
        assert!(e.message().contains(message), "{name}: {e}");
        assert_eq!(e.file(), Some(p.as_path()));
        let shown = e.to_string();
        assert!(
            shown.contains(place) && shown.contains(&*p.to_string_lossy()),
            "{shown}"
        );
        assert!(
            !format!("{shown} {e:?}").contains("secretHeaderValue"),
            "{shown}"
        );
    }

    // Too large: a body above max_body_bytes, a file above max_file_bytes.
    let p = malformed(&d, "huge_body", |v| {
        v["log"]["entries"][0]["response"]["content"]["text"] = "x".repeat(4096).into()
    });
    let e = Cassette::new(&p)
        .max_body_bytes(1024)
        .build_replay()
        .unwrap_err();
    assert_eq!(e.kind(), CassetteErrorKind::TooLarge, "{e}");
    assert_eq!(e.place(), Some("log.entries[0].response.content.text"));
    assert!(e.message().contains("max_body_bytes (1024)"), "{e}");
    let e = Cassette::new(&p)
        .max_file_bytes(1000)
        .build_replay()
        .unwrap_err();
    assert_eq!(e.kind(), CassetteErrorKind::TooLarge, "{e}");
    assert_eq!(e.place(), None);

    // Truncated: the place is a line and column.
    let good = std::fs::read_to_string(malformed(&d, "good", |_| {})).unwrap();
    assert!(Cassette::from_json(good.clone()).build_replay().is_ok());
    let p = d.join("truncated.har");
    std::fs::write(&p, &good[..good.len() / 2]).unwrap();
    let e = refused(&p);
    assert_eq!(e.kind(), CassetteErrorKind::Malformed);
    assert!(e.place().unwrap().starts_with("line 1, column "), "{e}");
    assert!(e.message().contains("truncated"), "{e}");

    // A missing file, in replay: the error says how to record it.
    let e = refused(&d.join("absent.har"));
    assert_eq!(e.kind(), CassetteErrorKind::NotFound);
    assert!(e.to_string().contains("PALISADE_CASSETTE=record"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn no_cut_or_corruption_of_a_cassette_panics() {
    let fixture = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/browser.har"),
    )
    .unwrap();
    let compact = serde_json::to_string(&serde_json::from_str::<Value>(&fixture).unwrap()).unwrap();
    let mut errors = 0;
    for cut in (0..compact.len()).step_by(7) {
        if Cassette::from_json(&compact[..cut]).build_replay().is_err() {
            errors += 1;
        }
    }
    assert_eq!(errors, compact.len().div_ceil(7));
    // Every string replaced by a number, every number by a string, one at a time.
    let doc: Value = serde_json::from_str(&compact).unwrap();
    let mut paths = Vec::new();
    fn walk(v: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    at.push(k.clone());
                    walk(v, at, out);
                    at.pop();
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    at.push(i.to_string());
                    walk(v, at, out);
                    at.pop();
                }
            }
            _ => out.push(at.clone()),
        }
    }
    walk(&doc, &mut Vec::new(), &mut paths);
    for p in paths {
        let mut d = doc.clone();
        let mut v = &mut d;
        for k in &p {
            v = match v {
                Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
                other => &mut other[k.as_str()],
            };
        }
        *v = if v.is_string() {
            12345.into()
        } else {
            "x".into()
        };
        let _ = Cassette::from_json(d.to_string()).build_replay();
    }
}

#[tokio::test]
async fn each_write_is_a_complete_cassette_through_a_temporary_file() {
    let d = dir("atomic");
    let cassette = d.join("atomic.har");
    std::fs::write(&cassette, "{\"previous\": true}").unwrap();
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("x".repeat(10_000)))
        .mount(&server)
        .await;
    let transport = recorder(&cassette);
    // Record starts a new cassette, but the previous stays until the first exchange.
    assert_eq!(read_json(&cassette)["previous"], true);
    let c = over(transport.clone());
    for n in 1..=5 {
        c.get(format!("{}/n/{n}", server.uri()))
            .send()
            .await
            .unwrap();
        assert_eq!(entries(&cassette).len(), n);
        let names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["atomic.har"], "no temporary file is left");
    }
    // Concurrent exchanges: every one written, in the order they were sent.
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let c = c.clone();
            let url = format!("{}/c/{i}", server.uri());
            tokio::spawn(async move { c.get(url).send().await.unwrap().status() })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), 200);
    }
    let e = entries(&cassette);
    assert_eq!(e.len(), 13);
    assert_eq!(transport.len(), 13);
    let firsts: Vec<&str> = e[..5]
        .iter()
        .map(|e| e["request"]["url"].as_str().unwrap())
        .collect();
    for (i, url) in firsts.iter().enumerate() {
        assert!(url.ends_with(&format!("/n/{}", i + 1)), "{url}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

fn two_entries() -> String {
    serde_json::json!({"log": {"version": "1.2", "entries": [
        {
            "request": {"method": "GET", "url": "http://api.test/users?page=1&token=REDACTED"},
            "response": {"status": 200, "headers": [], "content": {"size": 1, "text": "1"}}
        },
        {
            "request": {"method": "GET", "url": "http://api.test/orders"},
            "response": {"status": 200, "headers": [], "content": {"size": 1, "text": "o"}}
        }
    ]}})
    .to_string()
}

#[tokio::test]
async fn a_request_with_no_match_fails_once_naming_it_and_the_closest_entry() {
    let replay = Cassette::from_json(two_entries()).build_replay().unwrap();
    let c = over(replay.clone());

    let err = c
        .get("http://api.test/users?page=2&token=SECRETTOKEN")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Request);
    assert_eq!(err.attempts(), 1, "not retried");
    let no_match = err
        .source()
        .and_then(|s| s.downcast_ref::<NoMatch>())
        .expect("a NoMatch source");
    assert_eq!(
        no_match.request(),
        "GET http://api.test/users?page=REDACTED&token=REDACTED"
    );
    assert_eq!(
        no_match.closest(),
        Some("entry 0: GET http://api.test/users?page=REDACTED&token=REDACTED (differs in query `page`)")
    );
    let shown = format!("{} {err:?}", chain(&err));
    assert!(!shown.contains("SECRETTOKEN"), "{shown}");
    assert!(
        shown.contains("no recorded answer in cassette given as a string"),
        "{shown}"
    );

    // Nothing of the same path: the fewest edits away.
    let err = c.get("http://api.test/order").send().await.unwrap_err();
    let no_match = err.source().unwrap().downcast_ref::<NoMatch>().unwrap();
    assert_eq!(
        no_match.closest(),
        Some("entry 1: GET http://api.test/orders (differs in the path)")
    );
    let err = c.delete("http://api.test/orders").send().await.unwrap_err();
    let no_match = err.source().unwrap().downcast_ref::<NoMatch>().unwrap();
    assert_eq!(
        no_match.closest(),
        Some("entry 1: GET http://api.test/orders (differs in the method)")
    );

    // Used up: the next identical request says so.
    c.get("http://api.test/orders").send().await.unwrap();
    let err = c.get("http://api.test/orders").send().await.unwrap_err();
    let no_match = err.source().unwrap().downcast_ref::<NoMatch>().unwrap();
    assert!(no_match.is_exhausted());
    assert!(chain(&err).contains("replayed already"), "{}", chain(&err));
    assert_eq!(
        replay.unused(),
        ["entry 0: GET http://api.test/users?page=REDACTED&token=REDACTED"]
    );

    // Not a failure of the host: the breaker stays closed after many.
    for _ in 0..30 {
        let e = c.get("http://api.test/nothing").send().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Request);
    }
    let resp = c
        .get("http://api.test/users?token=other&page=1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "1");
}

#[tokio::test]
async fn after_the_last_answer_the_last_repeats_when_asked() {
    let replay = Cassette::from_json(two_entries())
        .after_last(AfterLast::RepeatLast)
        .build_replay()
        .unwrap();
    let c = over(replay);
    for _ in 0..3 {
        let r = c.get("http://api.test/orders").send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "o");
    }
}

#[tokio::test]
async fn header_and_custom_matchers_pick_the_entry() {
    let har = serde_json::json!({"log": {"entries": [
        {
            "request": {"method": "GET", "url": "http://api.test/doc",
                        "headers": [{"name": "Accept", "value": "text/html"}]},
            "response": {"status": 200, "headers": [], "content": {"text": "<p>"}}
        },
        {
            "request": {"method": "GET", "url": "http://api.test/doc",
                        "headers": [{"name": "accept", "value": "application/json"}]},
            "response": {"status": 200, "headers": [], "content": {"text": "{}"}}
        }
    ]}})
    .to_string();
    let c = over(
        Cassette::from_json(har.clone())
            .match_header("ACCEPT")
            .after_last(AfterLast::RepeatLast)
            .build_replay()
            .unwrap(),
    );
    let get = |accept: &'static str| {
        let c = c.clone();
        async move {
            c.get("http://api.test/doc")
                .header("accept", accept)
                .send()
                .await
        }
    };
    assert_eq!(
        get("application/json").await.unwrap().text().await.unwrap(),
        "{}"
    );
    assert_eq!(get("text/html").await.unwrap().text().await.unwrap(), "<p>");
    let err = get("image/png").await.unwrap_err();
    assert!(
        chain(&err).contains("differs in header `accept`"),
        "{}",
        chain(&err)
    );

    let c = over(
        Cassette::from_json(har)
            .match_with(|req, rec| req.headers().get("accept") == rec.headers().get("accept"))
            .build_replay()
            .unwrap(),
    );
    let r = c
        .get("http://api.test/doc")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "{}");
}

#[tokio::test]
async fn replay_or_record_answers_what_it_has_and_records_the_rest() {
    let d = dir("auto");
    let cassette = d.join("auto.har");
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/a"))
        .respond_with(ResponseTemplate::new(200).set_body_string("a live"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/b"))
        .respond_with(ResponseTemplate::new(200).set_body_string("b live"))
        .expect(1)
        .mount(&server)
        .await;
    let a = format!("{}/a", server.uri());
    let b = format!("{}/b", server.uri());
    // A first run records /a (the file does not exist yet).
    let auto = || {
        Cassette::new(&cassette)
            .mode(Mode::ReplayOrRecord)
            .build(reqwest::Client::new())
            .unwrap()
    };
    let c = over(auto());
    assert_eq!(
        c.get(&a).send().await.unwrap().text().await.unwrap(),
        "a live"
    );
    // A second run replays /a and records /b.
    let t = auto();
    assert_eq!(t.len(), 1);
    let c = over(t.clone());
    assert_eq!(
        c.get(&a).send().await.unwrap().text().await.unwrap(),
        "a live"
    );
    assert_eq!(
        c.get(&b).send().await.unwrap().text().await.unwrap(),
        "b live"
    );
    assert_eq!(t.len(), 2);
    assert_eq!(entries(&cassette).len(), 2);
    server.verify().await;
    drop(server);
    // Then everything replays.
    let c = over(Cassette::new(&cassette).build_replay().unwrap());
    assert_eq!(
        c.get(&b).send().await.unwrap().text().await.unwrap(),
        "b live"
    );
    assert_eq!(
        c.get(&a).send().await.unwrap().text().await.unwrap(),
        "a live"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test]
async fn a_body_above_the_limit_is_handed_on_whole_and_recorded_without_it() {
    let d = dir("large");
    let cassette = d.join("large.har");
    let server = MockServer::start().await;
    let big: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(big.clone()))
        .mount(&server)
        .await;
    let t = Cassette::new(&cassette)
        .mode(Mode::Record)
        .max_body_bytes(1024)
        .build(reqwest::Client::new())
        .unwrap();
    let resp = over(t)
        .get(format!("{}/big", server.uri()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.bytes().await.unwrap(), big);
    let e = &entries(&cassette)[0];
    assert!(e["response"]["content"].get("text").is_none());
    let comment = e["comment"].as_str().unwrap();
    assert!(
        comment.contains("larger than max_body_bytes (1024)"),
        "{comment}"
    );
    drop(server);
    let resp = over(Cassette::new(&cassette).build_replay().unwrap())
        .get(format!("{}/big", server_uri_of(e)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&d);
}

/// The scheme and authority of a recorded entry's URL.
fn server_uri_of(entry: &Value) -> String {
    let url = url::Url::parse(entry["request"]["url"].as_str().unwrap()).unwrap();
    url.origin().ascii_serialization()
}

#[tokio::test]
async fn a_failed_exchange_is_recorded_and_replays_as_the_same_error() {
    let d = dir("failure");
    let cassette = d.join("failure.har");
    let url = format!("http://{}/down?token=tokenOfTheFailure", net::closed_port());
    let c = Client::builder()
        .transport(recorder(&cassette))
        .no_retry()
        .build()
        .unwrap();
    let live = c.get(&url).send().await.unwrap_err();
    assert_eq!(live.kind(), ErrorKind::Connect, "{live:?}");
    let e = &entries(&cassette)[0];
    assert_eq!(e["response"]["status"], 0);
    assert_eq!(e["response"]["_errorKind"], "connect");
    assert!(!std::fs::read_to_string(&cassette)
        .unwrap()
        .contains("tokenOfTheFailure"));

    let c = Client::builder()
        .transport(Cassette::new(&cassette).build_replay().unwrap())
        .no_retry()
        .build()
        .unwrap();
    let replayed = c.get(&url).send().await.unwrap_err();
    assert_eq!(replayed.kind(), ErrorKind::Connect);
    assert!(replayed.is_connect());
    assert!(
        chain(&replayed).contains("recorded failure"),
        "{}",
        chain(&replayed)
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test(start_paused = true)]
async fn simulated_latency_meets_the_attempt_timeout_in_paused_time() {
    let har = serde_json::json!({"log": {"entries": [{
        "request": {"method": "GET", "url": "http://api.test/slow"},
        "response": {"status": 200, "headers": [], "content": {"text": "late"}},
        "timings": {"wait": 1500.0, "receive": 1.0}
    }]}})
    .to_string();
    let build = |latency: bool| {
        Client::builder()
            .transport(
                Cassette::from_json(har.clone())
                    .simulate_latency(latency)
                    .build_replay()
                    .unwrap(),
            )
            .attempt_timeout(Duration::from_secs(1))
            .no_retry()
            .build()
            .unwrap()
    };
    let start = tokio::time::Instant::now();
    let err = build(true)
        .get("http://api.test/slow")
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    let resp = build(false)
        .get("http://api.test/slow")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "late");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

#[test]
fn the_mode_comes_from_the_environment() {
    // The only test that touches PALISADE_CASSETTE.
    let d = dir("env");
    let p = d.join("env.har");
    std::env::set_var(Mode::ENV, "bogus");
    let e = Cassette::from_env(&p, reqwest::Client::new()).unwrap_err();
    assert_eq!(e.kind(), CassetteErrorKind::Config);
    assert!(
        e.to_string().contains("`record`, `replay` or `auto`"),
        "{e}"
    );
    std::env::set_var(Mode::ENV, "auto");
    let t = Cassette::from_env(&p, reqwest::Client::new()).unwrap();
    assert_eq!(t.mode(), Mode::ReplayOrRecord);
    std::env::set_var(Mode::ENV, "RECORD");
    assert_eq!(Mode::from_env().unwrap(), Mode::Record);
    std::env::remove_var(Mode::ENV);
    assert_eq!(Mode::from_env().unwrap(), Mode::Replay);
    let e = Cassette::from_env(&p, reqwest::Client::new()).unwrap_err();
    assert_eq!(e.kind(), CassetteErrorKind::NotFound);
    // A cassette given as a string cannot record.
    let e = Cassette::from_json("{}")
        .mode(Mode::Record)
        .build(reqwest::Client::new())
        .unwrap_err();
    assert_eq!(e.kind(), CassetteErrorKind::Config);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn debug_shows_no_secret_of_the_real_transport() {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", "Bearer DEFAULTSECRET".parse().unwrap());
    let inner = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();
    let t = Cassette::from_json(two_entries()).build(inner).unwrap();
    let shown = format!("{t:?}");
    assert!(!shown.contains("DEFAULTSECRET"), "{shown}");
    assert!(
        shown.contains("CassetteTransport") && shown.contains("entries: 2"),
        "{shown}"
    );
}

#[tokio::test]
async fn a_body_that_fails_midway_is_recorded_so_and_replays_so() {
    use support::{chunked_response, BodyEnd};
    let d = dir("cut");
    let cassette = d.join("cut.har");
    // A transport of its own, whose responses carry no URL and whose body is cut short.
    let inner = tower::service_fn(|_req: reqwest::Request| async {
        Ok::<_, palisade::Error>(chunked_response(
            vec![b"first part, ", b"second"],
            BodyEnd::Fail,
            None,
        ))
    });
    let t = Cassette::new(&cassette)
        .mode(Mode::Record)
        .build(inner)
        .unwrap();
    let url = "http://api.test/stream?key=streamKeySecret";
    let read_all = |resp: reqwest::Response| async move {
        let mut resp = resp;
        let mut got = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => got.extend_from_slice(&c),
                Ok(None) => return (got, None),
                Err(e) => return (got, Some(e)),
            }
        }
    };
    let c = Client::builder().transport(t).no_retry().build().unwrap();
    let resp = c.get(url).send().await.unwrap();
    assert_eq!(
        resp.url().as_str(),
        url,
        "the request's URL stands in for none"
    );
    let (got, err) = read_all(resp).await;
    assert_eq!(got, b"first part, second");
    // reqwest's `chunk` reports a body's failure as a decode error over a body error.
    let err = err.expect("the body fails");
    assert!(err.is_decode() || err.is_body(), "{err:?}");
    assert!(format!("{err:?}").contains("body cut short"), "{err:?}");

    let e = &entries(&cassette)[0];
    assert_eq!(e["response"]["content"]["text"], "first part, second");
    assert_eq!(e["response"]["_errorKind"], "body");
    assert!(e["comment"]
        .as_str()
        .unwrap()
        .contains("failed after 18 bytes"));
    assert!(!std::fs::read_to_string(&cassette)
        .unwrap()
        .contains("streamKeySecret"));

    let c = Client::builder()
        .transport(Cassette::new(&cassette).build_replay().unwrap())
        .no_retry()
        .build()
        .unwrap();
    let resp = c
        .get("http://api.test/stream?key=other")
        .send()
        .await
        .unwrap();
    let (got, err) = read_all(resp).await;
    assert_eq!(got, b"first part, second");
    let err = err.expect("the replayed body fails too");
    assert!(err.is_decode() || err.is_body(), "{err:?}");
    assert!(format!("{err:?}").contains("body cut short"), "{err:?}");
    let _ = std::fs::remove_dir_all(&d);
}
