//! reqwest parity: one program, written against reqwest's request API, is compiled twice, once
//! over `reqwest` and once over `palisade`, with nothing changed but the crate its `Client`,
//! `RequestBuilder` and `Error` come from; both run against the same local servers and must
//! see the same statuses, bodies and error predicates.
//!
//! Then what the program cannot show by comparison: that a request made with
//! `RequestBuilder::from_parts` keeps its extensions on every attempt, and that a multipart
//! body is sent once.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use support::net;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request as Seen, Respond, ResponseTemplate};

/// The servers the program talks to.
pub struct Servers {
    /// wiremock: `/echo` (any method) answers with what it received; `/status/404`, `/text`
    /// (a body that is not JSON) and `/loop` (a redirect to itself).
    base: String,
    /// Nothing listens there.
    closed: SocketAddr,
    /// Accepts connections and never answers.
    silent: SocketAddr,
    /// Answers a head that announces 10 bytes, sends 3 and stalls.
    stalling: SocketAddr,
}

/// Echoes a request as JSON: method, path, query, the headers the program sets, and the body.
/// A multipart boundary (random) is replaced by `BOUNDARY` in the content type and the body.
struct Echo;

impl Respond for Echo {
    fn respond(&self, req: &Seen) -> ResponseTemplate {
        let header = |name: &str| {
            req.headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let mut content_type = header("content-type");
        let mut body = String::from_utf8_lossy(&req.body).into_owned();
        if let Some(boundary) = content_type
            .as_deref()
            .and_then(|ct| ct.split_once("boundary="))
            .map(|(_, b)| b.to_owned())
        {
            content_type = content_type.map(|ct| ct.replace(&boundary, "BOUNDARY"));
            body = body.replace(&boundary, "BOUNDARY");
        }
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "method": req.method.as_str(),
            "path": req.url.path(),
            "query": req.url.query(),
            "x-one": header("x-one"),
            "x-two": header("x-two"),
            "authorization": header("authorization"),
            "content-type": content_type,
            "content-length": header("content-length"),
            "body": body,
        }))
    }
}

async fn servers() -> (MockServer, Servers) {
    let mock = MockServer::start().await;
    Mock::given(path("/echo"))
        .respond_with(Echo)
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/status/404"))
        .respond_with(ResponseTemplate::new(404).set_body_string("missing"))
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/text"))
        .respond_with(ResponseTemplate::new(200).set_body_string("not json"))
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/loop"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", "/loop"))
        .mount(&mock)
        .await;
    let (silent, _) = net::silent_server().await;
    let (stalling, _) = net::stalling_server(
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\ncontent-type: text/plain\r\n\r\nabc",
    )
    .await;
    let servers = Servers {
        base: mock.uri(),
        closed: net::closed_port(),
        silent,
        stalling,
    };
    (mock, servers)
}

/// The program, over the crate named `$krate`: `reqwest`, or `palisade`.
macro_rules! program {
    ($module:ident, $krate:ident) => {
        mod $module {
            use std::time::Duration;

            use ::reqwest::header::{HeaderMap, HeaderValue};
            use ::reqwest::multipart::{Form, Part};
            use ::reqwest::{Method, Request, StatusCode, Version};
            use serde_json::Value;

            // The one line that differs between the two builds.
            use ::$krate::{Client, Error, RequestBuilder};

            type BoxError = Box<dyn std::error::Error + Send + Sync>;

            /// Every predicate both `Error`s have, in one line.
            fn predicates(e: &Error) -> String {
                format!(
                    "builder={} request={} redirect={} status={:?}/{} body={} decode={} \
                     timeout={} connect={} url={}",
                    e.is_builder(),
                    e.is_request(),
                    e.is_redirect(),
                    e.status(),
                    e.is_status(),
                    e.is_body(),
                    e.is_decode(),
                    e.is_timeout(),
                    e.is_connect(),
                    e.url().map_or("none", |u| u.path()),
                )
            }

            /// What a `without_url` error shows: nothing of `host`, and no URL left.
            fn stripped(e: Error, host: &str) -> String {
                let e = e.without_url();
                let shown = format!("{e}");
                format!(
                    "without_url: url={:?} shows_host={}",
                    e.url(),
                    shown.contains(host)
                )
            }

            pub async fn run(s: &super::Servers) -> Result<Vec<String>, BoxError> {
                let client = Client::new();
                let echo = format!("{}/echo", s.base);
                let host = s.base.trim_start_matches("http://").to_owned();
                let mut out = Vec::new();

                // Headers, a query, bearer authentication, a timeout and a version.
                let mut headers = HeaderMap::new();
                headers.insert("x-two", HeaderValue::from_static("two"));
                let resp = client
                    .get(&echo)
                    .header("x-one", "one")
                    .headers(headers)
                    .query(&[("page", "2"), ("q", "a b")])
                    .bearer_auth("tok")
                    .timeout(Duration::from_secs(5))
                    .version(Version::HTTP_11)
                    .send()
                    .await?;
                out.push(format!("get: {} {:?}", resp.status(), resp.version()));
                out.push(resp.text().await?);

                // A form with basic authentication, read as JSON.
                let resp = client
                    .post(&echo)
                    .basic_auth("user", Some("pw"))
                    .form(&[("a", "1"), ("b", "x y")])
                    .send()
                    .await?;
                out.push(format!("form: {}", resp.status()));
                out.push(resp.json::<Value>().await?.to_string());

                // JSON, read as bytes.
                let resp = client
                    .put(&echo)
                    .json(&serde_json::json!({"k": [1, 2]}))
                    .send()
                    .await?;
                out.push(format!("json: {} {:?}", resp.status(), resp.content_length()));
                out.push(String::from_utf8(resp.bytes().await?.to_vec())?);

                // A raw body.
                let resp = client.patch(&echo).body("raw body").send().await?;
                out.push(resp.text().await?);

                // A multipart form: a stream, so the builder cannot be copied.
                let form = || -> Result<Form, BoxError> {
                    Ok(Form::new().text("name", "value").part(
                        "file",
                        Part::bytes(b"abc".to_vec())
                            .file_name("a.txt")
                            .mime_str("text/plain")?,
                    ))
                };
                let rb = client.post(&echo).multipart(form()?);
                out.push(format!("multipart clone: {}", rb.try_clone().is_some()));
                out.push(rb.send().await?.text().await?);

                // `build`, then `execute`.
                let req = client.delete(&echo).header("x-one", "built").build()?;
                out.push(format!("built: {} {}", req.method(), req.url().path()));
                out.push(client.execute(req).await?.text().await?);

                // `build_split`, then `execute` on the client it gave back.
                let (c, req) = client.head(&echo).build_split();
                let resp = c.execute(req?).await?;
                out.push(format!("head: {}", resp.status()));
                out.push(format!("head body: {:?}", resp.bytes().await?));

                // `from_parts`: a request made by hand, added to, sent.
                let req = Request::new(Method::OPTIONS, echo.parse()?);
                let resp = RequestBuilder::from_parts(client.clone(), req)
                    .header("x-one", "parts")
                    .send()
                    .await?;
                out.push(resp.text().await?);

                // `try_clone`: the same request twice; `request` with a method.
                let rb = client
                    .request(Method::GET, &echo)
                    .header("x-one", "clone");
                let again = rb.try_clone().ok_or("a builder without a stream clones")?;
                out.push(rb.send().await?.text().await?);
                out.push(again.send().await?.text().await?);

                // A 404 is a response; `error_for_status` makes it an error.
                let resp = client.get(format!("{}/status/404", s.base)).send().await?;
                out.push(format!("404: {}", resp.status()));
                let e = Error::from(resp.error_for_status().unwrap_err());
                out.push(format!("404 error: {}", predicates(&e)));
                assert_eq!(e.status(), Some(StatusCode::NOT_FOUND));
                out.push(stripped(e, &host));

                // A body that is not JSON.
                let resp = client.get(format!("{}/text", s.base)).send().await?;
                let e = Error::from(resp.json::<Value>().await.unwrap_err());
                out.push(format!("decode error: {}", predicates(&e)));

                // An invalid header.
                let e = client
                    .get(&echo)
                    .header("bad name", "v")
                    .send()
                    .await
                    .unwrap_err();
                out.push(format!("builder error: {}", predicates(&e)));
                let rb = client.get(&echo).header("bad name", "v");
                out.push(format!("errored clone: {}", rb.try_clone().is_some()));
                let e = rb.build().unwrap_err();
                out.push(format!("build error: {}", predicates(&e)));

                // A refused connection; `url_mut` takes the query off.
                let mut e = client
                    .get(format!("http://{}/refused?token=t", s.closed))
                    .send()
                    .await
                    .unwrap_err();
                out.push(format!("refused: {}", predicates(&e)));
                if let Some(url) = e.url_mut() {
                    url.set_query(None);
                }
                out.push(format!("url_mut: {:?}", e.url().map(|u| u.as_str().contains('?'))));
                out.push(stripped(e, &s.closed.to_string()));

                // No answer within the request's timeout.
                let e = client
                    .get(format!("http://{}/silent", s.silent))
                    .timeout(Duration::from_millis(100))
                    .send()
                    .await
                    .unwrap_err();
                out.push(format!("timeout: {}", predicates(&e)));

                // The request's timeout covers reading the body too.
                let resp = client
                    .get(format!("http://{}/stalling", s.stalling))
                    .timeout(Duration::from_millis(200))
                    .send()
                    .await?;
                out.push(format!("stalling: {}", resp.status()));
                let e = Error::from(resp.bytes().await.unwrap_err());
                out.push(format!("body timeout: {}", predicates(&e)));

                // A redirect loop.
                let e = client
                    .get(format!("{}/loop", s.base))
                    .send()
                    .await
                    .unwrap_err();
                out.push(format!("redirect: {}", predicates(&e)));

                Ok(out)
            }
        }
    };
}

program!(over_reqwest, reqwest);
program!(over_palisade, palisade);

#[tokio::test]
async fn a_reqwest_program_runs_the_same_over_palisade() {
    let (_mock, s) = servers().await;
    let theirs = over_reqwest::run(&s).await.expect("over reqwest");
    let ours = over_palisade::run(&s).await.expect("over palisade");
    for (i, (a, b)) in theirs.iter().zip(&ours).enumerate() {
        assert_eq!(a, b, "line {i} differs");
    }
    assert_eq!(theirs.len(), ours.len());

    // And the transcript says what it should, so that agreeing is not agreeing on nothing.
    let line = |prefix: &str| {
        ours.iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix}: {ours:#?}"))
            .clone()
    };
    let echo = |i: usize| -> serde_json::Value { serde_json::from_str(&ours[i]).unwrap() };
    assert_eq!(ours[0], "get: 200 OK HTTP/1.1");
    let get = echo(1);
    assert_eq!(get["query"], "page=2&q=a+b");
    assert_eq!(get["x-one"], "one");
    assert_eq!(get["x-two"], "two");
    assert_eq!(get["authorization"], "Bearer tok");
    let form = echo(3);
    assert_eq!(form["body"], "a=1&b=x+y");
    assert_eq!(form["authorization"], "Basic dXNlcjpwdw==");
    assert_eq!(form["content-type"], "application/x-www-form-urlencoded");
    assert_eq!(echo(5)["body"], r#"{"k":[1,2]}"#);
    assert_eq!(echo(6)["body"], "raw body");
    assert_eq!(line("multipart clone"), "multipart clone: false");
    let multipart = echo(8);
    assert_eq!(
        multipart["content-type"],
        "multipart/form-data; boundary=BOUNDARY"
    );
    let body = multipart["body"].as_str().unwrap();
    assert!(body.contains("name=\"file\"; filename=\"a.txt\""), "{body}");
    assert!(multipart["content-length"].is_string(), "{multipart}");
    assert_eq!(line("built"), "built: DELETE /echo");
    let deleted = echo(10);
    assert_eq!(
        (&deleted["method"], &deleted["x-one"]),
        (&"DELETE".into(), &"built".into())
    );
    assert_eq!(line("head:"), "head: 200 OK");
    let parts = echo(13);
    assert_eq!(
        (&parts["method"], &parts["x-one"]),
        (&"OPTIONS".into(), &"parts".into())
    );
    assert_eq!(ours[14], ours[15], "a clone sends the same request");
    assert_eq!(echo(14)["x-one"], "clone");
    assert_eq!(line("404:"), "404: 404 Not Found");
    assert!(line("404 error").contains("status=Some(404)/true"));
    assert!(line("404 error").contains("request=false"));
    for l in ["404 error", "refused"] {
        let i = ours.iter().position(|x| x.starts_with(l)).unwrap();
        let stripped = &ours[i + 1 + usize::from(l == "refused")];
        assert_eq!(stripped, "without_url: url=None shows_host=false", "{l}");
    }
    assert!(line("decode error").contains("decode=true"));
    assert!(line("builder error").contains("builder=true request=false"));
    assert_eq!(line("errored clone"), "errored clone: false");
    assert!(line("build error").contains("builder=true"));
    let refused = line("refused");
    assert!(refused.contains("request=true"), "{refused}");
    assert!(refused.contains("connect=true url=/refused"), "{refused}");
    assert_eq!(line("url_mut"), "url_mut: Some(false)");
    let timeout = line("timeout");
    assert!(timeout.contains("request=true"), "{timeout}");
    assert!(timeout.contains("timeout=true connect=false"), "{timeout}");
    assert_eq!(line("stalling"), "stalling: 200 OK");
    assert!(line("body timeout").contains("decode=true timeout=true"));
    let redirect = line("redirect");
    assert!(redirect.contains("redirect=true"), "{redirect}");
    assert!(redirect.contains("url=/loop"), "{redirect}");
}

/// A value a request carries in its extensions, as middleware puts one there.
#[derive(Clone, Debug, PartialEq)]
struct Mark(u32);

/// A transport that answers 503, then 200, and records the mark each attempt carried.
fn marking_client(marks: Arc<Mutex<Vec<Option<u32>>>>) -> palisade::Client {
    let transport = tower::service_fn(move |req: reqwest::Request| {
        let marks = marks.clone();
        async move {
            let req = http::Request::<reqwest::Body>::try_from(req)?;
            let mut marks = marks.lock().unwrap();
            marks.push(req.extensions().get::<Mark>().map(|m| m.0));
            let status = if marks.len() % 2 == 1 { 503 } else { 200 };
            let resp = http::Response::builder()
                .status(status)
                .body(reqwest::Body::from(""))
                .map_err(|e| palisade::Error::from_source(palisade::ErrorKind::Request, e))?;
            Ok::<_, palisade::Error>(reqwest::Response::from(resp))
        }
    });
    palisade::Client::builder()
        .transport(transport)
        .retry(support::exact(support::ms(10), support::ms(10)))
        .build()
        .unwrap()
}

fn marked_request() -> reqwest::Request {
    let req = http::Request::builder()
        .uri("http://api.test/marked")
        .extension(Mark(7))
        .body("")
        .unwrap();
    let mut req = reqwest::Request::try_from(req).unwrap();
    // No body, as a GET has: a request with one is copied with `try_clone` whoever built it.
    *req.body_mut() = None;
    req
}

// `send` copies a request its builder made from scratch without its extensions (it has none
// but its timeout); one from `from_parts` has its own, and every retry must carry them.
#[tokio::test(start_paused = true)]
async fn a_request_from_parts_keeps_its_extensions_on_every_attempt() {
    use palisade::ResponseExt as _;
    let marks = Arc::new(Mutex::new(Vec::new()));
    let client = marking_client(marks.clone());

    let resp = palisade::RequestBuilder::from_parts(client.clone(), marked_request())
        .header("x-one", "1")
        .send()
        .await
        .unwrap();
    assert_eq!((resp.status().as_u16(), resp.attempts()), (200, 2));
    assert_eq!(*marks.lock().unwrap(), [Some(7), Some(7)]);

    // A copy of the builder, and `build_split`, keep them too.
    marks.lock().unwrap().clear();
    let rb = palisade::RequestBuilder::from_parts(client.clone(), marked_request());
    let copy = rb.try_clone().unwrap();
    copy.send().await.unwrap();
    let (c, req) = rb.build_split();
    c.execute(req.unwrap()).await.unwrap();
    assert_eq!(*marks.lock().unwrap(), [Some(7); 4]);

    // A request the builder made from scratch has none, on every attempt.
    marks.lock().unwrap().clear();
    client.get("http://api.test/plain").send().await.unwrap();
    assert_eq!(*marks.lock().unwrap(), [None, None]);
}

// A multipart body is a stream: a 503 is not retried, the request is sent once.
#[tokio::test(start_paused = true)]
async fn a_multipart_request_is_sent_once() {
    use palisade::ResponseExt as _;
    let marks = Arc::new(Mutex::new(Vec::new()));
    let client = marking_client(marks.clone());
    let form = reqwest::multipart::Form::new().text("a", "b");
    let resp = client
        .put("http://api.test/upload")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!((resp.status().as_u16(), resp.attempts()), (503, 1));
    assert_eq!(marks.lock().unwrap().len(), 1);
}
