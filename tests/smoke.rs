mod support;
use palisade::ResponseExt;
use support::{Mock, Step};

#[tokio::test(start_paused = true)]
async fn three_attempts_on_503() {
    let mock = Mock::always(Step::Status(503));
    let client = mock.client(|b| b);
    let resp = client.get("http://api.test/x").send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.attempts(), 3);
    assert_eq!(mock.calls(), 3);
}
