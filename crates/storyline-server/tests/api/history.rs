//! `GET /v1/stories/{story}/events?after=&limit=`.

use serde_json::json;

use crate::helpers::{Kind, assert_problem, both_brokers, spawn};

both_brokers!(
    history_pages_oldest_first_and_links_the_next_page,
    history_of_an_unknown_story_is_empty,
    a_limit_outside_one_to_a_thousand_is_400,
    a_malformed_after_is_400,
);

async fn history_pages_oldest_first_and_links_the_next_page(kind: Kind) {
    let app = spawn(kind).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(app.publish("s", "chapter", json!(n)).await["id"].as_str().unwrap().to_owned());
    }
    let (status, page) = app.history("s", "?limit=2").await;
    assert_eq!(status, 200);
    let got: Vec<_> = page["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(got, ids[..2].to_vec());
    assert_eq!(page["next"], ids[1].as_str(), "a full page links the next one");
    assert_eq!(
        page["events"][0],
        json!({"id": ids[0], "story": "s", "type": "chapter", "data": 0, "author": "tester", "ts": page["events"][0]["ts"]})
    );
    let (_, rest) = app.history("s", &format!("?after={}&limit=10", ids[1])).await;
    let got: Vec<_> = rest["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(got, ids[2..].to_vec(), "after is exclusive");
    assert_eq!(rest["next"], serde_json::Value::Null, "a page that is not full ends the history");
}

async fn history_of_an_unknown_story_is_empty(kind: Kind) {
    let app = spawn(kind).await;
    let (status, page) = app.history("nobody-wrote-here", "").await;
    assert_eq!((status.as_u16(), page), (200, json!({"events": [], "next": null})));
}

async fn a_limit_outside_one_to_a_thousand_is_400(kind: Kind) {
    let app = spawn(kind).await;
    for limit in ["0", "1001", "-1", "ten", ""] {
        let response = app
            .client
            .get(app.url(&format!("/v1/stories/s/events?limit={limit}")))
            .bearer_auth(app.admin_token())
            .send()
            .await
            .unwrap();
        assert_problem(response, 400, &format!("limit={limit}")).await;
    }
    let (status, _) = app.history("s", "?limit=1000").await;
    assert_eq!(status, 200, "1000 is allowed");
}

async fn a_malformed_after_is_400(kind: Kind) {
    let app = spawn(kind).await;
    for after in ["x", "1", "1-x", ""] {
        let response = app
            .client
            .get(app.url(&format!("/v1/stories/s/events?after={after}")))
            .bearer_auth(app.admin_token())
            .send()
            .await
            .unwrap();
        assert_problem(response, 400, &format!("after={after}")).await;
    }
}
