//! The route table: every route wafer answers, in one list. Each row says which method and path
//! pattern it answers, its metrics label, its dialect (which words it answers errors, a wrong
//! method and "busy" in), which pool answers it, and its handler.
//!
//! Two pools (`http::serve`): the workers answer from memory and the database only, never
//! waiting on WeChat or a `forward_url`; the upstream pool (`http::upstream`) answers what may
//! wait on them. A [`Pool::Upstream`] row (a login, a callback) goes there straight from the
//! worker that read it. A [`Pool::Workers`] row whose handler finds it must wait (a credential
//! not usable from memory, an envelope that turns out to be a login) answers
//! [`Outcome::NeedsUpstream`](crate::api::Outcome) and goes there too; its handler runs again there,
//! allowed to wait. Either way the request is routed once, here.
//!
//! A pattern's `{name}` segment matches any one segment (empty too) and is read by the handler
//! as `rq.param(0)`, `rq.param(1)` in order; a last `{*name}` matches the rest of the path, one
//! or more segments whatever they hold (the gateway's `{path}`, which its handler checks). The session check rows come first: they are the hot
//! path.

use crate::api::envelope;
use crate::api::{callbacks, dev, gateway_routes, mina, ops, v1};
use crate::api::{Context, Incoming, Method, Outcome, Params, Reply, Wait};
use crate::core::error::Error;

/// Which threads answer a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// The workers: memory and the database only. The handler may still answer
    /// `Outcome::NeedsUpstream`, and the upstream pool answers it instead.
    Workers,
    /// The upstream pool: may wait on WeChat or a `forward_url`.
    Upstream,
}

/// Whose words a route answers in when its handler does not: a handler's error, a method the
/// route does not take, and "busy" (the upstream pool is full).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// The Wafer envelope (CONTRACT §3): always HTTP 200, busy is 1005 `WEIXIN_NET_ERR`.
    Envelope,
    /// `/mina/*` (CONTRACT §4): always HTTP 200, busy is `WEIXIN_NET_ERR`.
    Mina,
    /// `/v1` (CONTRACT §5), behind `api::guard`: busy is 503 `busy` with `Retry-After: 1`;
    /// another method is 404, like an unknown route.
    V1,
    /// `/wechat/*` (CONTRACT §6): busy is 503 `busy` (WeChat sends it again).
    Callback,
    /// `/healthz`, `/metrics`.
    Plain,
    /// `/dev/*`, only under `wafer dev`; another method is 404.
    Dev,
}

impl Dialect {
    /// The answer when the upstream pool has no room for a request that would wait.
    pub fn busy(self) -> Reply {
        match self {
            Dialect::Envelope => envelope::render_error(Error::Busy),
            Dialect::Mina => mina::fail_from(Error::Busy),
            Dialect::V1 | Dialect::Callback | Dialect::Plain | Dialect::Dev => v1::busy(),
        }
    }

    /// A handler's error in this dialect's words.
    pub fn error(self, e: Error) -> Reply {
        match self {
            Dialect::Envelope => envelope::render_error(e),
            Dialect::Mina => mina::fail_from(e),
            Dialect::V1 | Dialect::Callback | Dialect::Plain | Dialect::Dev => v1::error_reply(e),
        }
    }

    /// The answer to a method the route does not take.
    pub fn wrong_method(self) -> Reply {
        match self {
            Dialect::V1 | Dialect::Dev => crate::api::not_found(),
            _ => crate::api::method_not_allowed(),
        }
    }
}

/// A handler. The ones told whether they may wait ([`Handler::MayWait`]) are those on a worker
/// that can find they need WeChat; the others never need it ([`Pool::Workers`]) or run only
/// where waiting is allowed ([`Pool::Upstream`]).
#[derive(Clone, Copy)]
pub enum Handler {
    /// Answers in its own words whatever happens.
    Reply(fn(&mut Context, &Incoming) -> Reply),
    /// Its errors are answered in the route's dialect.
    Result(fn(&mut Context, &Incoming) -> Result<Reply, Error>),
    /// May answer `Outcome::NeedsUpstream` when `Wait::Forbidden` (it writes nothing before);
    /// its errors are answered in the route's dialect.
    MayWait(fn(&mut Context, &Incoming, Wait) -> Result<Outcome, Error>),
}

pub struct Route {
    pub methods: &'static [Method],
    pub pattern: &'static str,
    /// The metrics label.
    pub label: &'static str,
    pub dialect: Dialect,
    pub pool: Pool,
    pub handler: Handler,
    /// Served only under `wafer dev`.
    pub dev_only: bool,
}

impl Route {
    /// Run the handler; `wait` says whether it may wait on WeChat.
    pub fn run(&self, w: &mut Context, rq: &Incoming, wait: Wait) -> Outcome {
        match self.handler {
            Handler::Reply(f) => Outcome::Reply(f(w, rq)),
            Handler::Result(f) => {
                Outcome::Reply(f(w, rq).unwrap_or_else(|e| self.dialect.error(e)))
            }
            Handler::MayWait(f) => {
                f(w, rq, wait).unwrap_or_else(|e| Outcome::Reply(self.dialect.error(e)))
            }
        }
    }
}

const GET: &[Method] = &[Method::Get];
const POST: &[Method] = &[Method::Post];
const GET_POST: &[Method] = &[Method::Get, Method::Post];
const ANY: &[Method] = &[Method::Get, Method::Post, Method::Other];

const fn row(
    methods: &'static [Method],
    pattern: &'static str,
    dialect: Dialect,
    pool: Pool,
    handler: Handler,
) -> Route {
    Route {
        methods,
        pattern,
        label: pattern,
        dialect,
        pool,
        handler,
        dev_only: false,
    }
}

use Dialect::{Callback, Envelope, Plain, V1};
use Handler::{MayWait, Reply as Replies, Result as Fallible};
use Pool::{Upstream, Workers};

/// Every route. The label is the pattern, except for the envelope's aliases.
pub static ROUTES: &[Route] = &[
    row(
        POST,
        "/mina_auth/",
        Envelope,
        Workers,
        MayWait(envelope::handle),
    ),
    row(
        POST,
        "/v1/sessions/check",
        V1,
        Workers,
        Fallible(v1::check_session),
    ),
    row(
        POST,
        "/mina/auth",
        Dialect::Mina,
        Workers,
        Replies(mina::auth),
    ),
    Route {
        label: "/mina_auth/",
        ..row(
            POST,
            "/mina_auth",
            Envelope,
            Workers,
            MayWait(envelope::handle),
        )
    },
    Route {
        label: "/mina_auth/",
        ..row(POST, "/", Envelope, Workers, MayWait(envelope::handle))
    },
    row(
        POST,
        "/mina/login",
        Dialect::Mina,
        Upstream,
        Replies(mina::login),
    ),
    Route {
        label: "/mina/login",
        ..row(
            POST,
            "/mina/login/",
            Dialect::Mina,
            Upstream,
            Replies(mina::login),
        )
    },
    Route {
        label: "/mina/auth",
        ..row(
            POST,
            "/mina/auth/",
            Dialect::Mina,
            Workers,
            Replies(mina::auth),
        )
    },
    row(GET, "/healthz", Plain, Workers, Replies(ops::healthz)),
    row(GET, "/metrics", Plain, Workers, Replies(ops::metrics)),
    // /v1 (every one behind `api::guard`)
    row(
        POST,
        "/v1/sessions",
        V1,
        Upstream,
        Fallible(v1::create_session),
    ),
    row(
        POST,
        "/v1/sessions/decrypt",
        V1,
        Workers,
        Fallible(v1::decrypt),
    ),
    row(
        POST,
        "/v1/sessions/revoke",
        V1,
        Workers,
        Fallible(v1::revoke),
    ),
    row(
        POST,
        "/v1/sessions/phone_number",
        V1,
        Upstream,
        Fallible(v1::phone_number),
    ),
    row(
        GET,
        "/v1/apps/{appid}/access_token",
        V1,
        Workers,
        MayWait(v1::app_token),
    ),
    row(
        POST,
        "/v1/apps/{appid}/access_token/invalidate",
        V1,
        Upstream,
        Fallible(v1::invalidate),
    ),
    row(
        GET,
        "/v1/apps/{appid}/jsapi_ticket",
        V1,
        Workers,
        MayWait(v1::app_ticket),
    ),
    row(
        POST,
        "/v1/apps/{appid}/jsapi_signature",
        V1,
        Workers,
        MayWait(v1::app_signature),
    ),
    row(
        GET,
        "/v1/work/{corpid}/{agentid}/access_token",
        V1,
        Workers,
        MayWait(v1::work_token),
    ),
    row(
        GET,
        "/v1/work/{corpid}/{agentid}/jsapi_ticket",
        V1,
        Workers,
        MayWait(v1::work_corp_ticket),
    ),
    row(
        GET,
        "/v1/work/{corpid}/{agentid}/agent_ticket",
        V1,
        Workers,
        MayWait(v1::work_agent_ticket),
    ),
    row(
        POST,
        "/v1/work/{corpid}/{agentid}/jsapi_signature",
        V1,
        Workers,
        MayWait(v1::work_signature),
    ),
    row(
        GET,
        "/v1/components/{appid}/access_token",
        V1,
        Workers,
        MayWait(v1::component_token),
    ),
    row(
        GET,
        "/v1/components/{appid}/authorizers",
        V1,
        Workers,
        Fallible(v1::authorizers),
    ),
    row(
        GET,
        "/v1/components/{appid}/authorizers/{authorizer}",
        V1,
        Workers,
        MayWait(v1::authorizer),
    ),
    row(
        GET,
        "/v1/components/{appid}/authorizers/{authorizer}/access_token",
        V1,
        Workers,
        MayWait(v1::authorizer_token),
    ),
    row(POST, "/v1/cos/sign", V1, Workers, Fallible(v1::cos_sign)),
    // The WeChat API gateway (CONTRACT §9): any method; it waits on WeChat.
    row(
        ANY,
        "/v1/apps/{appid}/wechat/{*path}",
        V1,
        Upstream,
        Replies(gateway_routes::call),
    ),
    row(
        ANY,
        "/v1/work/{corpid}/{agentid}/wechat/{*path}",
        V1,
        Upstream,
        Replies(gateway_routes::call),
    ),
    row(
        ANY,
        "/v1/components/{appid}/authorizers/{authorizer}/wechat/{*path}",
        V1,
        Upstream,
        Replies(gateway_routes::call),
    ),
    row(
        ANY,
        "/v1/components/{appid}/wechat/{*path}",
        V1,
        Upstream,
        Replies(gateway_routes::call),
    ),
    // WeChat's callbacks (signed by WeChat; they may wait on a forward_url or WeChat)
    row(
        GET_POST,
        "/wechat/mp/{appid}",
        Callback,
        Upstream,
        Replies(callbacks::mp),
    ),
    row(
        GET_POST,
        "/wechat/work/{corpid}/{agentid}",
        Callback,
        Upstream,
        Replies(callbacks::work),
    ),
    row(
        POST,
        "/wechat/component/{appid}/events",
        Callback,
        Upstream,
        Replies(callbacks::component_events),
    ),
    row(
        GET,
        "/wechat/component/{appid}/authorize",
        Callback,
        Upstream,
        Replies(callbacks::authorize),
    ),
    row(
        GET,
        "/wechat/component/{appid}/callback",
        Callback,
        Upstream,
        Replies(callbacks::component_callback),
    ),
    Route {
        dev_only: true,
        ..row(
            POST,
            "/dev/encrypted_data",
            Dialect::Dev,
            Workers,
            Fallible(dev::encrypted_data),
        )
    },
];

/// Does `path` match `pattern`? Its parameters if so. No allocation.
fn matches(pattern: &str, path: &str) -> Option<Params> {
    let mut params = Params::default();
    let (mut pat, mut segs) = (pattern.split('/'), path.split('/'));
    let mut at = 0usize;
    loop {
        match (pat.next(), segs.next()) {
            (None, None) => return Some(params),
            (Some(p), Some(s)) => {
                if p.starts_with("{*") {
                    // The rest of the path, from this segment on.
                    params.push(at, path.len())?;
                    return Some(params);
                }
                if p.starts_with('{') {
                    params.push(at, at + s.len())?;
                } else if p != s {
                    return None;
                }
                at += s.len() + 1;
            }
            _ => return None,
        }
    }
}

/// What the table says about a request.
pub enum Found {
    /// This route answers it, with these parameters.
    Route(&'static Route, Params),
    /// This route's path, another method.
    WrongMethod(&'static Route),
    /// No route.
    None,
}

/// Look a request up in [`ROUTES`]; `dev`: the `/dev/*` rows are served.
pub fn find(method: Method, path: &str, dev: bool) -> Found {
    let mut wrong = None;
    for route in ROUTES {
        if route.dev_only && !dev {
            continue;
        }
        if let Some(params) = matches(route.pattern, path) {
            if route.methods.contains(&method) {
                return Found::Route(route, params);
            }
            wrong = wrong.or(Some(route));
        }
    }
    match wrong {
        Some(route) => Found::WrongMethod(route),
        None => Found::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route: (method, path) → (label, pool, params).
    #[test]
    fn every_route_has_its_pool_and_label() {
        use Method::{Get, Other, Post};
        let cases: &[(Method, &str, &str, Pool, &[&str])] = &[
            (Post, "/mina_auth/", "/mina_auth/", Workers, &[]),
            (Post, "/mina_auth", "/mina_auth/", Workers, &[]),
            (Post, "/", "/mina_auth/", Workers, &[]),
            (Post, "/mina/login", "/mina/login", Upstream, &[]),
            (Post, "/mina/auth", "/mina/auth", Workers, &[]),
            (Post, "/mina/login/", "/mina/login", Upstream, &[]),
            (Post, "/mina/auth/", "/mina/auth", Workers, &[]),
            (Get, "/healthz", "/healthz", Workers, &[]),
            (Get, "/metrics", "/metrics", Workers, &[]),
            (Post, "/v1/sessions", "/v1/sessions", Upstream, &[]),
            (
                Post,
                "/v1/sessions/check",
                "/v1/sessions/check",
                Workers,
                &[],
            ),
            (
                Post,
                "/v1/sessions/decrypt",
                "/v1/sessions/decrypt",
                Workers,
                &[],
            ),
            (
                Post,
                "/v1/sessions/revoke",
                "/v1/sessions/revoke",
                Workers,
                &[],
            ),
            (
                Post,
                "/v1/sessions/phone_number",
                "/v1/sessions/phone_number",
                Upstream,
                &[],
            ),
            (
                Get,
                "/v1/apps/wx1/access_token",
                "/v1/apps/{appid}/access_token",
                Workers,
                &["wx1"],
            ),
            (
                Post,
                "/v1/apps/wx1/access_token/invalidate",
                "/v1/apps/{appid}/access_token/invalidate",
                Upstream,
                &["wx1"],
            ),
            (
                Get,
                "/v1/apps/wx1/jsapi_ticket",
                "/v1/apps/{appid}/jsapi_ticket",
                Workers,
                &["wx1"],
            ),
            (
                Post,
                "/v1/apps/wx1/jsapi_signature",
                "/v1/apps/{appid}/jsapi_signature",
                Workers,
                &["wx1"],
            ),
            (
                Get,
                "/v1/work/ww1/1000002/access_token",
                "/v1/work/{corpid}/{agentid}/access_token",
                Workers,
                &["ww1", "1000002"],
            ),
            (
                Get,
                "/v1/work/ww1/1000002/jsapi_ticket",
                "/v1/work/{corpid}/{agentid}/jsapi_ticket",
                Workers,
                &["ww1", "1000002"],
            ),
            (
                Get,
                "/v1/work/ww1/1000002/agent_ticket",
                "/v1/work/{corpid}/{agentid}/agent_ticket",
                Workers,
                &["ww1", "1000002"],
            ),
            (
                Post,
                "/v1/work/ww1/1000002/jsapi_signature",
                "/v1/work/{corpid}/{agentid}/jsapi_signature",
                Workers,
                &["ww1", "1000002"],
            ),
            (
                Get,
                "/v1/components/wxc/access_token",
                "/v1/components/{appid}/access_token",
                Workers,
                &["wxc"],
            ),
            (
                Get,
                "/v1/components/wxc/authorizers",
                "/v1/components/{appid}/authorizers",
                Workers,
                &["wxc"],
            ),
            (
                Get,
                "/v1/components/wxc/authorizers/wxa",
                "/v1/components/{appid}/authorizers/{authorizer}",
                Workers,
                &["wxc", "wxa"],
            ),
            (
                Get,
                "/v1/components/wxc/authorizers/wxa/access_token",
                "/v1/components/{appid}/authorizers/{authorizer}/access_token",
                Workers,
                &["wxc", "wxa"],
            ),
            (Post, "/v1/cos/sign", "/v1/cos/sign", Workers, &[]),
            (
                Get,
                "/wechat/mp/wx1",
                "/wechat/mp/{appid}",
                Upstream,
                &["wx1"],
            ),
            (
                Post,
                "/wechat/mp/wx1",
                "/wechat/mp/{appid}",
                Upstream,
                &["wx1"],
            ),
            (
                Post,
                "/wechat/work/ww1/1000002",
                "/wechat/work/{corpid}/{agentid}",
                Upstream,
                &["ww1", "1000002"],
            ),
            (
                Post,
                "/wechat/component/wxc/events",
                "/wechat/component/{appid}/events",
                Upstream,
                &["wxc"],
            ),
            (
                Get,
                "/wechat/component/wxc/authorize",
                "/wechat/component/{appid}/authorize",
                Upstream,
                &["wxc"],
            ),
            (
                Get,
                "/wechat/component/wxc/callback",
                "/wechat/component/{appid}/callback",
                Upstream,
                &["wxc"],
            ),
            (
                Post,
                "/dev/encrypted_data",
                "/dev/encrypted_data",
                Workers,
                &[],
            ),
            (
                Post,
                "/v1/apps/wx1/wechat/cgi-bin/message/custom/send",
                "/v1/apps/{appid}/wechat/{*path}",
                Upstream,
                &["wx1", "cgi-bin/message/custom/send"],
            ),
            (
                Other,
                "/v1/work/ww1/1000002/wechat/cgi-bin//x/",
                "/v1/work/{corpid}/{agentid}/wechat/{*path}",
                Upstream,
                &["ww1", "1000002", "cgi-bin//x/"],
            ),
            (
                Get,
                "/v1/components/wxc/authorizers/wxa/wechat/x",
                "/v1/components/{appid}/authorizers/{authorizer}/wechat/{*path}",
                Upstream,
                &["wxc", "wxa", "x"],
            ),
            (
                Post,
                "/v1/components/wxc/wechat/cgi-bin/component/api_get_authorizer_list",
                "/v1/components/{appid}/wechat/{*path}",
                Upstream,
                &["wxc", "cgi-bin/component/api_get_authorizer_list"],
            ),
            // An empty segment is a parameter too (the handler answers it: no such app).
            (
                Get,
                "/v1/apps//access_token",
                "/v1/apps/{appid}/access_token",
                Workers,
                &[""],
            ),
        ];
        let mut reached = std::collections::HashSet::new();
        for &(method, path, label, pool, params) in cases {
            let Found::Route(route, found) = find(method, path, true) else {
                panic!("{method:?} {path}: no route");
            };
            reached.insert(route.pattern);
            assert_eq!((route.label, route.pool), (label, pool), "{path}");
            for (i, p) in params.iter().enumerate() {
                assert_eq!(found.get(path, i), *p, "{path} param {i}");
            }
            assert_eq!(
                found.get(path, params.len()),
                "",
                "{path}: one param too many"
            );
        }
        // Every row is reached by some case.
        for route in ROUTES {
            assert!(
                reached.contains(route.pattern),
                "{} is not tested",
                route.pattern
            );
        }
    }

    #[test]
    fn what_no_route_answers() {
        use Method::{Get, Other, Post};
        for (method, path) in [
            (Get, "/mina_auth/"),
            (Other, "/healthz"),
            (Post, "/healthz"),
            (Get, "/v1/sessions"),
            (Post, "/v1/apps/wx1/access_token"),
            (Get, "/wechat/component/wxc/events"),
            (Other, "/wechat/mp/wx1"),
        ] {
            assert!(
                matches!(find(method, path, false), Found::WrongMethod(_)),
                "{method:?} {path}"
            );
        }
        for (method, path) in [
            (Get, "/nope"),
            (Post, "/mina_auth//"),
            (Post, "/v1/sessions/"),
            (Post, "/v1/apps/wx1/access_token/invalidate/x"),
            (Get, "/wechat/mp"),
            (Post, "/wechat/mp/wx1/x"),
            (Post, "/dev/encrypted_data"),
            // The gateway's `{path}` is one segment at least.
            (Post, "/v1/apps/wx1/wechat"),
        ] {
            assert!(
                matches!(find(method, path, false), Found::None),
                "{method:?} {path}"
            );
        }
        // 404 for another method on /v1 and /dev, 405 elsewhere.
        let Found::WrongMethod(r) = find(Get, "/v1/sessions", false) else {
            unreachable!()
        };
        assert_eq!(r.dialect.wrong_method().status, 404);
        let Found::WrongMethod(r) = find(Get, "/mina_auth/", false) else {
            unreachable!()
        };
        assert_eq!(r.dialect.wrong_method().status, 405);
    }
}
