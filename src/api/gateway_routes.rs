//! The gateway's four routes (CONTRACT §9, `ANY /v1/…/wechat/{path}`), on the upstream pool and
//! behind `api::guard` like every `/v1` route: parse the target from the path, hand the call
//! to `crate::core::gateway`, and render WeChat's answer as it came (status, `Content-Type`,
//! `Content-Disposition`, body, and `Wafer-Retried: 1` after a renewal) or the gateway's own
//! refusal in `/v1`'s error shape.

use super::v1;
use super::{not_found, Context, Incoming, Reply};
use crate::core::gateway::{parse_route, Call, GatewayError, Refusal};

pub fn call(w: &mut Context, rq: &Incoming) -> Reply {
    // The route table matched one of the four patterns, which `parse_route` reads the same way.
    let Some((target, path)) = parse_route(rq.path) else {
        return not_found();
    };
    let call = Call {
        target: &target,
        path,
        method: rq.verb,
        query: rq.query,
        content_type: rq.header("Content-Type"),
        body: &rq.body,
    };
    match w.shared.gateway.call(&w.shared.broker, &w.db, &call) {
        Ok(answer) => {
            let wechat = answer.wechat;
            let mut reply = Reply::text(wechat.status, "", wechat.body);
            let headers = [
                ("Content-Type", wechat.content_type),
                ("Content-Disposition", wechat.content_disposition),
            ];
            for (name, value) in headers {
                if let Some(v) = value {
                    reply.headers.push((name, v));
                }
            }
            if answer.retried {
                reply.headers.push(("Wafer-Retried", "1".into()));
            }
            reply
        }
        Err(GatewayError::Refused(Refusal::Busy)) => v1::busy(),
        Err(GatewayError::Refused(refusal)) => {
            let (status, code, message) = refusal.answer();
            Reply::error(status, code, message, None)
        }
        Err(GatewayError::Core(e)) => v1::error_reply(e),
    }
}
