//! Every upstream path wafer calls, with the host it is called on (`wechat::Host`). Paths are
//! also the `endpoint` label of `wafer_upstream_calls_total` and of the upstream log line, so
//! they never carry a query.

// api.weixin.qq.com (Host::Api): mini programs and official accounts.
/// Mini-program login: a `js_code` for (openid, session_key, unionid).
pub const JSCODE2SESSION: &str = "/sns/jscode2session";
/// An app's access token (`GET`, `grant_type=client_credential`).
pub const TOKEN: &str = "/cgi-bin/token";
/// An app's stable access token (`POST`, `[wechat] stable_token = true`).
pub const STABLE_TOKEN: &str = "/cgi-bin/stable_token";
/// An official account's JS-SDK ticket (`type=jsapi`).
pub const TICKET_GETTICKET: &str = "/cgi-bin/ticket/getticket";

// api.weixin.qq.com (Host::Api): the Open Platform component. (`component.rs` still spells these
// four out; it moves to them with issue 12's next slice, once issue 11's changes there land.)
/// The component's own access token, from its secret and verify ticket.
pub const COMPONENT_TOKEN: &str = "/cgi-bin/component/api_component_token";
/// An authoriser's access token, from its refresh token.
pub const AUTHORIZER_TOKEN: &str = "/cgi-bin/component/api_authorizer_token";
/// A pre-auth code for the authorisation page.
pub const CREATE_PREAUTHCODE: &str = "/cgi-bin/component/api_create_preauthcode";
/// An `auth_code` exchanged for the authoriser's tokens.
pub const QUERY_AUTH: &str = "/cgi-bin/component/api_query_auth";

// qyapi.weixin.qq.com (Host::Work): WeCom.
/// A WeCom agent's access token (`corpid` + the agent's secret).
pub const WORK_GETTOKEN: &str = "/cgi-bin/gettoken";
/// A WeCom corp's JS-SDK ticket.
pub const WORK_GET_JSAPI_TICKET: &str = "/cgi-bin/get_jsapi_ticket";
/// A WeCom agent's JS-SDK ticket (`type=agent_config`).
pub const WORK_TICKET_GET: &str = "/cgi-bin/ticket/get";
