//! Recording scope usage and call outcomes on the request path allocates nothing: not on a
//! partner's first accepted call, not on later ones. `allocation_counter` counts the calling thread only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use certgate::config::model::{PartnerId, ScopeId};
use certgate::metrics::{Handles, Metrics};
use certgate::policy::RouteId;
use common::Env;

#[test]
fn recording_an_accepted_request_allocates_nothing() {
    let env = Env::new();
    let yaml = env.config("127.0.0.1:9".parse().unwrap(), "");
    let path = common::write_file(env.dir.path(), "certgate.yaml", &yaml);
    let config = certgate::config::load(&path).unwrap();
    let metrics = Metrics::new();
    let handles = Handles::build(&metrics, &config);
    let globex = config
        .partners
        .iter()
        .position(|p| p.id == "globex")
        .unwrap();
    let scope = |name: &str| ScopeId(config.scopes.iter().position(|s| s == name).unwrap());

    let mut seen = Vec::new();
    for s in ["orders:read", "payments:write", "orders:read"] {
        let mut accepted = None;
        let info = allocation_counter::measure(|| {
            accepted = handles.accepted(PartnerId(globex), scope(s));
        });
        assert_eq!(info.count_total, 0, "recording {s} allocated");
        seen.push(accepted.unwrap().first);
    }
    assert_eq!(
        seen,
        [true, false, false],
        "only the first call is the first"
    );
    let orders = RouteId(
        config
            .routes
            .iter()
            .position(|r| r.scope == scope("orders:read"))
            .unwrap(),
    );
    for (refused, status) in [(false, 200), (true, 405), (false, 502), (false, 204)] {
        let info = allocation_counter::measure(|| {
            handles.call(Some(orders), Some(PartnerId(globex)), refused, status);
        });
        assert_eq!(info.count_total, 0, "counting a call allocated");
    }
    let recorded = metrics.usage().recorded();
    let calls = recorded.calls("globex", "orders:read");
    assert_eq!(
        (calls.calls, calls.ok, calls.refused, calls.since_refused),
        (4, 2, 1, Some(2))
    );
    assert!(recorded.last_used("globex", "orders:read").is_some());
    assert!(recorded.last_used("globex", "payments:write").is_some());
    assert!(recorded.last_used("acme", "orders:read").is_none());
}
